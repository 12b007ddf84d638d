"""The door's refusals: one exception per HTTP outcome, rendered by each contract in its own error shape.

`message` is shown to the caller, so it never contains a key, a token or a storage error's text.
"""

from __future__ import annotations


class DoorError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class Unauthorized(DoorError):
    status_code = 401
    code = "unauthorized"


class ScopeDenied(DoorError):
    status_code = 403
    code = "forbidden"


class TargetNotFound(DoorError):
    status_code = 404
    code = "not_found"


class TargetDisabled(DoorError):
    status_code = 409
    code = "disabled"


class IdempotencyKeyReused(DoorError):
    status_code = 409
    code = "idempotency_conflict"


class RateLimited(DoorError):
    status_code = 429
    code = "rate_limited"

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(
            f"rate limit exceeded for this API key; retry in {retry_after_s}s",
            headers={"Retry-After": str(retry_after_s)},
        )
        self.retry_after_s = retry_after_s


class SessionStoreUnavailable(DoorError):
    status_code = 503
    code = "unavailable"


class SeedsRefused(DoorError):
    """The context variables as a whole are refused (too many, or they make the token too large)."""

    status_code = 422
    code = "validation_error"
