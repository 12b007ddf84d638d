"""A webhook receiver double: an aiohttp server on 127.0.0.1 that checks signatures like the platform would.

It verifies the HMAC itself (not with postcall.signing), so a signing bug fails the tests. Every request
is recorded, with the status it gets, as soon as it arrives (that is when a receiver processes it, whether or not
the sender is still waiting for the answer). `fail_next(n)` answers the next n requests with 503; `delay_s` makes
every answer that late (a slow receiver); `hang_next(n)` never answers the next n requests (recorded with status
`HUNG`; released by `stop()`); `free_port()` plus a later `start(port)` gives "connection refused" until the
receiver comes up.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TIMESTAMP_HEADER = "X-Voice-Worker-Timestamp"
SIGNATURE_HEADER = "X-Voice-Worker-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
# The status recorded for a request `hang_next` holds: it never gets an answer.
HUNG = 0


@dataclass(frozen=True)
class ReceivedRequest:
    body: bytes
    headers: dict[str, str]
    signature_valid: bool
    status: int

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get(IDEMPOTENCY_HEADER)


@dataclass
class WebhookReceiver:
    secret: str
    tolerance_s: float = 300.0
    requests: list[ReceivedRequest] = field(default_factory=list)
    port: int | None = None
    delay_s: float = 0.0
    _failures_left: int = 0
    _hangs_left: int = 0
    _released: asyncio.Event | None = None
    _failure_status: int = 503
    _runner: web.AppRunner | None = None
    _changed: asyncio.Condition | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("receiver has no port yet")
        return f"http://127.0.0.1:{self.port}/hooks/session"

    @property
    def accepted(self) -> list[ReceivedRequest]:
        return [r for r in self.requests if 200 <= r.status < 300]

    def fail_next(self, n: int, status: int = 503) -> None:
        self._failures_left, self._failure_status = n, status

    def hang_next(self, n: int) -> None:
        self._hangs_left = n

    def _valid(self, body: bytes, headers: dict[str, str]) -> bool:
        ts, sig = headers.get(TIMESTAMP_HEADER, ""), headers.get(SIGNATURE_HEADER, "")
        if not ts.isdigit() or abs(time.time() - int(ts)) > self.tolerance_s:
            return False
        expected = "v1=" + hmac.new(self.secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, sig)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        valid = self._valid(body, headers)
        hang = self._hangs_left > 0
        if hang:
            self._hangs_left -= 1
            status = HUNG  # recorded as never answered
        elif not valid:
            status = 401
        elif self._failures_left > 0:
            self._failures_left -= 1
            status = self._failure_status
        else:
            status = 204
        self.requests.append(ReceivedRequest(body=body, headers=headers, signature_valid=valid, status=status))
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()
        if hang:
            assert self._released is not None
            await self._released.wait()
            status = 503
        elif self.delay_s:
            await asyncio.sleep(self.delay_s)
        return web.Response(status=status)

    async def start(self, port: int = 0) -> int:
        self._changed = self._changed or asyncio.Condition()
        self._released = asyncio.Event()
        app = web.Application()
        app.router.add_post("/hooks/session", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        if self._released is not None:
            self._released.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for_requests(self, count: int, timeout: float) -> None:
        self._changed = self._changed or asyncio.Condition()
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.requests) >= count)

    async def wait_for_accepted(self, count: int, timeout: float) -> None:
        self._changed = self._changed or asyncio.Condition()
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.accepted) >= count)
