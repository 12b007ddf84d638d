"""FastAPI dependencies: the door's shared state and the authenticated, rate-limited caller of each contract.

Authentication runs as a dependency so that it is decided before the endpoint body and shows up in
/openapi.json as each contract's security scheme (`APIKeyHeader` for Feather, `bearerAuth` for RevDesk).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from door.core import WebCallService
from door.errors import RateLimited, Unauthorized
from door.idempotency import IdempotencyStore
from door.keys import ApiKey, KeyRing
from door.ratelimit import RateLimiter


@dataclass(frozen=True)
class DoorContext:
    service: WebCallService
    keys: KeyRing
    limiter: RateLimiter
    idempotency: IdempotencyStore


def door_context(request: Request) -> DoorContext:
    context: DoorContext = request.app.state.door
    return context


def _admit(context: DoorContext, presented: str | None, challenge: dict[str, str]) -> ApiKey:
    key = context.keys.authenticate(presented)
    if key is None:
        raise Unauthorized("missing or invalid API key", headers=challenge)
    retry_after = context.limiter.acquire(key.name)
    if retry_after is not None:
        raise RateLimited(retry_after)
    return key


api_key_header = APIKeyHeader(
    name="x-api-key", auto_error=False, description="A door API key (configured hashed in DOOR_API_KEYS_FILE)."
)
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearerAuth",
    description="A door API key as a bearer token (configured hashed in DOOR_API_KEYS_FILE).",
)


async def feather_caller(request: Request, presented: str | None = Security(api_key_header)) -> ApiKey:
    return _admit(door_context(request), presented, {})


async def revdesk_caller(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Security(bearer)
) -> ApiKey:
    presented = credentials.credentials if credentials is not None else None
    return _admit(door_context(request), presented, {"WWW-Authenticate": "Bearer"})
