"""The door process's settings: where it listens, its API keys, limits, timeouts and shared state, on top of what it
shares with the worker (contract/settings.py). README "Door limits" documents the limits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from contract.settings import SharedSettings, load


class DoorSettings(SharedSettings):
    door_api_keys_file: Path | None = Field(None, validation_alias="DOOR_API_KEYS_FILE")
    door_public_livekit_url: str | None = Field(None, validation_alias="DOOR_PUBLIC_LIVEKIT_URL")
    door_rate_limit_per_minute: int = Field(60, ge=1, le=100_000, validation_alias="DOOR_RATE_LIMIT_PER_MINUTE")
    door_idempotency_ttl_s: int = Field(86_400, ge=60, le=7 * 86_400, validation_alias="DOOR_IDEMPOTENCY_TTL_S")
    door_host: str = Field("0.0.0.0", validation_alias="DOOR_HOST")
    # The call page at `/` (door/call_page.py): always on in dev mode; in production only when this is true (the
    # platform's staff: the page asks for a door API key and mints through the Feather route like any client).
    door_call_page: bool = Field(False, validation_alias="DOOR_CALL_PAGE")
    door_port: int = Field(8000, ge=1, le=65535, validation_alias="DOOR_PORT")

    # --- web-call door: limits, timeouts, shared state (door/limits.py; README "Door limits") ---
    # Request bodies are refused (413) beyond this many bytes, declared or streamed, before any parsing.
    door_max_body_bytes: int = Field(16_384, ge=1_024, le=1_048_576, validation_alias="DOOR_MAX_BODY_BYTES")
    # All request headers together (uvicorn's h11 buffer); beyond it the connection gets a bare 400.
    door_max_header_bytes: int = Field(16_384, ge=4_096, le=1_048_576, validation_alias="DOOR_MAX_HEADER_BYTES")
    door_max_api_key_chars: int = Field(256, ge=32, le=4_096, validation_alias="DOOR_MAX_API_KEY_CHARS")
    door_idempotency_key_max_chars: int = Field(255, ge=16, le=1_024, validation_alias="DOOR_IDEMPOTENCY_KEY_MAX_CHARS")
    door_max_context_vars: int = Field(64, ge=1, le=1_000, validation_alias="DOOR_MAX_CONTEXT_VARS")
    # The browser token travels in the WebSocket URL to LiveKit: stay far below livekit-server's limits (512 KiB
    # metadata, 1 MiB of request headers) and under the 8 KiB request line of common reverse proxies.
    door_max_token_bytes: int = Field(7_680, ge=1_024, le=524_288, validation_alias="DOOR_MAX_TOKEN_BYTES")
    # A client must finish its request headers / its body within these many seconds of starting them.
    door_header_timeout_s: float = Field(10.0, gt=0, le=300, validation_alias="DOOR_HEADER_TIMEOUT_S")
    door_body_timeout_s: float = Field(10.0, gt=0, le=300, validation_alias="DOOR_BODY_TIMEOUT_S")
    # SIGTERM: in-flight requests may finish for this long before the door exits.
    door_shutdown_timeout_s: float = Field(20.0, gt=0, le=600, validation_alias="DOOR_SHUTDOWN_TIMEOUT_S")
    # "memory": rate-limit buckets and idempotency entries live in the process (one replica). "database": they
    # live in DATABASE_URL's database, shared by every replica (PostgreSQL for several hosts).
    door_shared_state: Literal["memory", "database"] = Field("memory", validation_alias="DOOR_SHARED_STATE")


def load_door_settings(**overrides: Any) -> DoorSettings:
    """The door's settings, or SettingsError with one line per invalid variable (contract.settings.load)."""
    return load(DoorSettings, **overrides)
