"""Request limits enforced before any parsing: body size and body time, the RevDesk media type, and crashes.

A pure ASGI middleware rather than a dependency, because FastAPI reads and parses the body before any
dependency runs: a declared `Content-Length` over the limit is refused (413) before one byte of the body is
read, and a chunked or under-declared body is counted as it streams and refused the moment it passes the limit.
Either way the response says `Connection: close`, so the server drops the rest instead of reading it.

A body that trickles in is cut off (408) once `DOOR_BODY_TIMEOUT_S` passed since the request's headers arrived.
Slow headers are the server's business (door/server.py): no application code runs before they are complete.
"""

from __future__ import annotations

import asyncio
import logging
import time

# FastAPI re-raises its own HTTPException from body parsing; any other exception there becomes a 400.
from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from door.refusals import MESSAGES, is_revdesk, render

log = logging.getLogger("voice_worker.door")

CLOSE = {"Connection": "close"}


class PayloadTooLarge(HTTPException):
    code = "payload_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes", headers=CLOSE)


class BodyTimeout(HTTPException):
    code = "request_timeout"

    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"the request body did not arrive within {seconds:g} s", headers=CLOSE)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _is_json(content_type: bytes | None) -> bool:
    media = (content_type or b"").split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


class RequestLimits:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, body_timeout_s: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        declared = _header(scope, b"content-length")
        chunked = b"chunked" in (_header(scope, b"transfer-encoding") or b"").lower()
        length = int(declared) if declared is not None and declared.isdigit() else 0
        if length > self.max_body_bytes:
            response = render(path, 413, PayloadTooLarge(self.max_body_bytes).detail, headers=CLOSE)
            await response(scope, receive, send)
            return
        if is_revdesk(path) and (length or chunked) and not _is_json(_header(scope, b"content-type")):
            # RevDesk's route takes no body; one that is sent anyway must at least be what the API speaks.
            response = render(path, 415, "a request body must be application/json", headers=CLOSE)
            await response(scope, receive, send)
            return

        received = 0
        body_done = not (length or chunked)
        deadline = time.monotonic() + self.body_timeout_s
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:
                return await receive()
            remaining = deadline - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(remaining, 0.0))
            except TimeoutError:
                raise BodyTimeout(self.body_timeout_s) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise PayloadTooLarge(self.max_body_bytes)
                body_done = not message.get("more_body", False)
            return message

        async def closing_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                headers = list(message.get("headers", []))
                if not body_done and not any(key.lower() == b"connection" for key, _ in headers):
                    # Answered before the body was read (a refusal, or a route that ignores bodies): close
                    # the connection rather than keep reading a body nobody wants.
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, limited_receive, closing_send)
        except Exception as exc:
            # Only the type: an exception's text can carry a connection string or a token.
            log.error("request failed unexpectedly (%s)", type(exc).__name__)
            if response_started:
                raise
            await render(path, 500, MESSAGES[500], headers=CLOSE)(scope, receive, send)
