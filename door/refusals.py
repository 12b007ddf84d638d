"""Every refusal in the shape its route's contract promises, wherever in the stack it is decided.

Most refusals are decided inside a route (`door.feather.FeatherRoute`, `door.revdesk.RevDeskRoute`). Some are
decided before any route runs or by Starlette itself: a body over the limit (413), a wrong method (405), an
unknown path (404), a body that is not JSON on RevDesk (415), a slow body (408), an unexpected crash (500).
Those are rendered here, by path: RevDesk's `{"error": {code, message}}` envelope under `/v1/agents/`, the
FastAPI-style `{"detail": message}` everywhere else.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

REVDESK_PREFIX = "/v1/agents/"

# Stable `error.code` for each status a refusal outside the door's own errors (door/errors.py) can have.
CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}

MESSAGES = {
    404: "no such resource",
    405: "this method is not allowed here",
    500: "the door failed unexpectedly; try again",
}


def is_revdesk(path: str) -> bool:
    return path.startswith(REVDESK_PREFIX)


def envelope(
    status_code: int,
    code: str,
    message: str,
    *,
    fields: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    error: dict[str, Any] = {"code": code, "message": message}
    if fields:
        error["fields"] = fields
    return JSONResponse({"error": error}, status_code=status_code, headers=headers)


def render(
    path: str, status_code: int, message: str, *, code: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The refusal for a request to `path`, in that route's contract shape."""
    if is_revdesk(path):
        return envelope(status_code, code or CODES.get(status_code, "error"), message, headers=headers)
    return JSONResponse({"detail": message}, status_code=status_code, headers=headers)


def install(app: FastAPI) -> None:
    """Contract-shaped handlers for Starlette's HTTP errors (crashes: `door.limits.RequestLimits`)."""

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else None
        message = MESSAGES.get(exc.status_code) if detail in (None, "Not Found", "Method Not Allowed") else detail
        code = getattr(exc, "code", None)
        return render(
            request.url.path,
            exc.status_code,
            message or "the request was refused",
            code=code if isinstance(code, str) else None,
            headers=dict(exc.headers or {}),
        )

    app.add_exception_handler(StarletteHTTPException, http_error)
