"""FastAPI dependencies: the door's shared state and the authenticated, rate-limited caller of each contract.

Authentication runs as a dependency so that it is decided before the endpoint body and shows up in
/openapi.json as each contract's security scheme (`APIKeyHeader` for Feather, `bearerAuth` for RevDesk).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from door.core import WebCallService
from door.errors import RateLimited, Unauthorized
from door.idempotency import Idempotency
from door.keys import ApiKey, KeyRing


class Limiter(Protocol):
    async def acquire_async(self, key: str) -> int | None: ...


@dataclass(frozen=True)
class DoorContext:
    service: WebCallService
    keys: KeyRing
    limiter: Limiter
    idempotency: Idempotency
    max_api_key_chars: int
    idempotency_key_max_chars: int


async def door_context(request: Request) -> DoorContext:
    # async on purpose: FastAPI runs a plain `def` dependency in its thread pool, a thread hop per request.
    context: DoorContext = request.app.state.door
    return context


async def _admit(context: DoorContext, presented: str | None, challenge: dict[str, str]) -> ApiKey:
    if presented is not None and len(presented) > context.max_api_key_chars:
        # Refused before hashing: no configured key is this long, and nothing large gets hashed per request.
        raise Unauthorized(f"invalid API key: longer than {context.max_api_key_chars} characters", headers=challenge)
    key = context.keys.authenticate(presented)
    if key is None:
        raise Unauthorized("missing or invalid API key", headers=challenge)
    retry_after = await context.limiter.acquire_async(key.name)
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
    return await _admit(request.app.state.door, presented, {})


async def revdesk_caller(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Security(bearer)
) -> ApiKey:
    presented = credentials.credentials if credentials is not None else None
    return await _admit(request.app.state.door, presented, {"WWW-Authenticate": "Bearer"})
