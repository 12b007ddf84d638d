"""The door's FastAPI application: both web-call contracts over one minting core, plus `/healthz`.

Everything the routes need is built here, eagerly, so that a misconfigured door (production without a keys
file or real secrets, an unreadable keys file, no session store) fails at start-up instead of on a call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from catalog.loader import CatalogStore
from door import call_page, feather, refusals, revdesk
from door.core import WebCallService
from door.dependencies import DoorContext, Limiter
from door.idempotency import Idempotency, IdempotencyStore
from door.keys import key_ring_for
from door.limits import RequestLimits
from door.metrics import install_metrics
from door.ratelimit import RateLimiter
from door.schemas import Health
from door.sessions import SessionCreator, default_session_creator
from door.settings import DoorSettings

log = logging.getLogger("voice_worker.door")

TITLE = "voice-worker web-call door"
VERSION = "1.0.0"
DESCRIPTION = """\
Mints LiveKit join tokens for browser test calls. Two contracts share one minting core:

* `POST /v1/voice/web-call` (Feather): `x-api-key`, body `agent_id` XOR `team_id` (+ `context_variables`),
  FastAPI-style errors.
* `POST /v1/agents/{id}/web-call` (RevDesk): bearer key, `Idempotency-Key`, `{"error": {...}}` envelope.

API keys are configured as SHA-256 hashes and scoped to agents and teams. Refusal codes are the same on
both routes: 401 missing or unknown key, 403 key not scoped to the target, 404 unknown target, 409 target
disabled, 429 per-key rate limit (token bucket, `Retry-After`), 503 session could not be recorded.
Limits, each a setting: request body `DOOR_MAX_BODY_BYTES` (413, before parsing), body time
`DOOR_BODY_TIMEOUT_S` (408), API key `DOOR_MAX_API_KEY_CHARS` (401), `Idempotency-Key`
`DOOR_IDEMPOTENCY_KEY_MAX_CHARS`, context variables `DOOR_MAX_CONTEXT_VARS` and per-value bounds, token
`DOOR_MAX_TOKEN_BYTES`. Rate limits and idempotency keys are held per door process, or in the database shared
by every replica (`DOOR_SHARED_STATE=database`).
"""


def create_app(
    settings: DoorSettings,
    *,
    catalog_store: CatalogStore | None = None,
    session_creator: SessionCreator | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """The door app. Raises `SettingsError` when it must not serve (see the module docstring).

    `clock` drives the rate limiter and idempotency expiry (tests pass a fake one).
    """
    settings.require_production_secrets()
    keys = key_ring_for(settings)
    if not settings.is_dev and not settings.door_public_livekit_url:
        log.warning(
            "DOOR_PUBLIC_LIVEKIT_URL is not set; browsers will be sent LIVEKIT_URL, which must then be reachable "
            "from them"
        )
    owns_creator = session_creator is None
    creator = session_creator if session_creator is not None else default_session_creator(settings)
    store = catalog_store if catalog_store is not None else CatalogStore(settings.catalog_path)

    limiter, idempotency = _state(settings, clock)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        # the database-backed state holds connection pools; the in-memory one has nothing to close
        for owned in (limiter, idempotency, creator if owns_creator else None):
            if owned is not None:
                await _close(owned)

    app = FastAPI(title=TITLE, version=VERSION, description=DESCRIPTION, lifespan=lifespan)
    app.state.door = DoorContext(
        service=WebCallService(settings, store, creator),
        keys=keys,
        limiter=limiter,
        idempotency=idempotency,
        max_api_key_chars=settings.door_max_api_key_chars,
        idempotency_key_max_chars=settings.door_idempotency_key_max_chars,
    )
    refusals.install(app)
    # Outside the routes, so a body is limited before anything reads it; metrics outside that, to count its 413s.
    app.add_middleware(
        RequestLimits, max_body_bytes=settings.door_max_body_bytes, body_timeout_s=settings.door_body_timeout_s
    )
    install_metrics(app)
    app.include_router(feather.router)
    app.include_router(revdesk.router)
    # `/`: the browser call page (dev mode, or DOOR_CALL_PAGE=true); a client of the Feather route like any other
    call_page.install(app, settings, store)

    @app.get("/healthz", response_model=Health, tags=["health"], summary="Liveness probe")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            # FastAPI documents a 422 for any route with parameters; RevDesk's validation errors are 400s.
            operation = schema["paths"][revdesk.PATH]["post"]
            operation["responses"].pop("422", None)
            # The configured bound, which the route checks itself (see revdesk.web_call).
            for parameter in operation.get("parameters", []):
                if parameter["name"] == revdesk.IDEMPOTENCY_HEADER:
                    limits = {"minLength": 1, "maxLength": settings.door_idempotency_key_max_chars}
                    parameter["schema"] = {**parameter["schema"], **limits}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise the schema
    return app


def _state(settings: DoorSettings, clock: Callable[[], float]) -> tuple[Limiter, Idempotency]:
    """Rate-limit buckets and idempotency entries: in this process, or shared through the database."""
    if settings.door_shared_state == "database":
        from door.shared_state import DatabaseIdempotency, DatabaseRateLimiter, shared_engine

        engine = shared_engine(settings.database_url)
        return (
            DatabaseRateLimiter(engine, settings.door_rate_limit_per_minute),
            DatabaseIdempotency(engine, settings.door_idempotency_ttl_s),
        )
    return (
        RateLimiter(settings.door_rate_limit_per_minute, clock=clock),
        IdempotencyStore(settings.door_idempotency_ttl_s, clock=clock),
    )


async def _close(owned: object) -> None:
    closer = getattr(owned, "aclose", None) or getattr(owned, "close", None)
    if closer is None:
        return
    result = closer()
    if hasattr(result, "__await__"):
        await result
