"""Process settings: one pydantic-settings class, read from the environment and `.env`.

Built lazily (`get_settings()`), never at import time, so tests and the CLI can construct their own.
Production mode refuses placeholder or missing secrets at start-up and names the variable; dev mode
falls back to the well-known `livekit-server --dev` pair and a clearly-marked dev signing secret.
"""

from __future__ import annotations

import functools
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

EXAMPLE_CATALOG = Path(__file__).resolve().parent.parent / "catalog" / "examples"

DEV_LIVEKIT_API_KEY = "devkey"
DEV_LIVEKIT_API_SECRET = "secret"
# Marked so that nobody mistakes it for a real secret; refused outside dev mode.
DEV_DISPATCH_SIGNING_SECRET = "dev-only-insecure-dispatch-signing-secret-do-not-use-in-production"

# Values that mean "somebody copied .env.example and forgot to fill it in".
_PLACEHOLDERS = {"", "changeme", "change-me", "changethis", "secret", "devkey", "xxx", "todo", "placeholder"}
_MIN_SIGNING_SECRET_LEN = 32

DEFAULT_PROMETHEUS_PORT = 9100
# Concurrent calls one worker holds before its turn latency degrades, by JOB_EXECUTOR: the density benchmark's
# "calls held" on a 2-core machine (benchmarks/density.py, README "Performance"). A thread-executor worker is
# one process, bound by the GIL to about one core whatever the machine; a process-executor worker spreads its
# calls over every core of its machine (the CPU term of the load covers machines unlike the benchmark's).
DEFAULT_WORKER_CALL_CAPACITY = {"thread": 20, "process": 30}


class Mode(StrEnum):
    DEV = "dev"
    PRODUCTION = "production"


class SettingsError(ValueError):
    """Settings are missing or unusable: one problem per line, each naming the environment variable, what is wrong
    and how to fix it (never the value: it may be a secret)."""

    def __init__(self, *problems: str) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


# How a newcomer gets a working set-up without real secrets; appended wherever dev mode would fix the problem.
DEV_MODE_HINT = "or set VOICE_WORKER_MODE=dev (in .env or the environment) to use the livekit-server --dev defaults"


class Settings(BaseSettings):
    # env_ignore_empty: `.env` starts as a copy of .env.example, whose secrets are `KEY=` lines; an empty value
    # must mean "not set" (dev defaults apply, None stays None), never an empty key or the path "".
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True)

    mode: Mode = Field(Mode.PRODUCTION, validation_alias="VOICE_WORKER_MODE")
    agent_name: str = Field("voice-worker", min_length=1, validation_alias="AGENT_NAME")

    livekit_url: str = Field("ws://localhost:7880", validation_alias="LIVEKIT_URL")
    livekit_api_key: SecretStr | None = Field(None, validation_alias="LIVEKIT_API_KEY")
    livekit_api_secret: SecretStr | None = Field(None, validation_alias="LIVEKIT_API_SECRET")

    dispatch_signing_secret: SecretStr | None = Field(None, validation_alias="DISPATCH_SIGNING_SECRET")
    dispatch_issuer: str = Field("voice-worker-door", validation_alias="DISPATCH_ISSUER")

    catalog_path: Path = Field(EXAMPLE_CATALOG, validation_alias="CATALOG_PATH")

    openai_api_key: SecretStr | None = Field(None, validation_alias="OPENAI_API_KEY")
    deepgram_api_key: SecretStr | None = Field(None, validation_alias="DEEPGRAM_API_KEY")
    # Self-hosted OpenAI-compatible servers usually accept any key; operators may still set one.
    openai_compatible_api_key: SecretStr | None = Field(None, validation_alias="OPENAI_COMPATIBLE_API_KEY")

    # --- storage and post-call (records/, postcall/) ---
    database_url: str = Field("sqlite:///var/voice-worker.db", validation_alias="DATABASE_URL")
    postcall_webhook_url: str | None = Field(None, validation_alias="POSTCALL_WEBHOOK_URL")
    postcall_webhook_secret: SecretStr | None = Field(None, validation_alias="POSTCALL_WEBHOOK_SECRET")
    postcall_step_timeout_s: float = Field(30.0, gt=0, le=600, validation_alias="POSTCALL_STEP_TIMEOUT_S")
    outbox_retry_base_s: float = Field(2.0, gt=0, le=600, validation_alias="OUTBOX_RETRY_BASE_S")
    outbox_retry_max_s: float = Field(300.0, gt=0, le=86_400, validation_alias="OUTBOX_RETRY_MAX_S")
    # One webhook request, connect to response, seconds; a receiver slower than this is sent the record again.
    outbox_request_timeout_s: float = Field(10.0, gt=0, le=300, validation_alias="OUTBOX_REQUEST_TIMEOUT_S")
    # After this many failed attempts, or once the entry is this old, it is parked (postcall/outbox.py).
    outbox_max_attempts: int = Field(25, ge=1, le=1000, validation_alias="OUTBOX_MAX_ATTEMPTS")
    outbox_max_age_s: float = Field(86_400.0, gt=0, le=30 * 86_400, validation_alias="OUTBOX_MAX_AGE_S")
    # How long a claimed entry is reserved for its sender; renewed while the request is in flight, so it bounds
    # how long a crashed sender's entry waits for another (or the restarted) worker.
    outbox_lease_s: float = Field(5.0, ge=1, le=300, validation_alias="OUTBOX_LEASE_S")
    memory_fact_cap: int = Field(50, ge=1, le=1000, validation_alias="MEMORY_FACT_CAP")
    memory_min_user_turns: int = Field(2, ge=0, le=100, validation_alias="MEMORY_MIN_USER_TURNS")
    memory_retention_days: int = Field(180, ge=1, le=3650, validation_alias="MEMORY_RETENTION_DAYS")

    # --- web-call door (door/) ---
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
    # Defaults for context variables whose ContextVarSpec declares no bound of its own (catalog/context_vars.py).
    context_var_max_string_chars: int = Field(1_024, ge=1, le=100_000, validation_alias="CONTEXT_VAR_MAX_STRING_CHARS")
    context_var_max_abs_int: int = Field(2**53 - 1, ge=1, le=2**63 - 1, validation_alias="CONTEXT_VAR_MAX_ABS_INT")
    context_var_max_abs_float: float = Field(1e15, gt=0, le=1e308, validation_alias="CONTEXT_VAR_MAX_ABS_FLOAT")
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

    health_port: int = Field(8081, ge=0, le=65535, validation_alias="HEALTH_PORT")
    health_host: str = Field("0.0.0.0", validation_alias="HEALTH_HOST")

    # --- fleet operations: metrics, capacity, drain (worker/metrics.py, worker/capacity.py) ---
    # Unset: 9100 in production, off in dev (a laptop or a test run need no fixed port); 0 turns it off.
    prometheus_port: int | None = Field(None, ge=0, le=65535, validation_alias="PROMETHEUS_PORT")
    # Concurrent calls one worker takes (active plus accepted offers) before latency degrades; unset:
    # DEFAULT_WORKER_CALL_CAPACITY for the executor (see `call_capacity`).
    worker_call_capacity: int | None = Field(None, ge=1, le=10_000, validation_alias="WORKER_CALL_CAPACITY")
    # How a worker runs its calls (docs/operations.md, "Executor and density"): "process" gives every call a
    # process of its own (livekit's default: a crash ends one call; ~79 MB per call); "thread" runs every call
    # as a thread of the worker process, sharing its models (~2.5 MB per call; a crash ends the worker's calls).
    job_executor: Literal["process", "thread"] = Field("process", validation_alias="JOB_EXECUTOR")
    # CPU guard: at this fraction of CPU use the worker reports itself full (worker/capacity.py), however few calls.
    load_threshold: float = Field(0.7, gt=0, le=1, validation_alias="LOAD_THRESHOLD")
    # Whether the machine's CPU use counts in the load (worker/capacity.py). Off where the machine's CPU is not the
    # worker's to judge: a machine shared with other work (a laptop, the real-server tests, where livekit-server
    # and the callers share the cores), so an idle worker is not reported full by someone else's load.
    worker_cpu_guard: bool = Field(True, validation_alias="WORKER_CPU_GUARD")
    # SIGTERM: how long active calls may run on before they are ended.
    drain_timeout_s: int = Field(600, ge=1, le=86_400, validation_alias="DRAIN_TIMEOUT_S")
    # At exit, after the calls ended: how long the last webhook delivery attempt may take.
    outbox_flush_timeout_s: float = Field(15.0, gt=0, le=600, validation_alias="OUTBOX_FLUSH_TIMEOUT_S")

    @model_validator(mode="after")
    def _fill_dev_defaults(self) -> Settings:
        if self.mode is Mode.DEV:
            if self.livekit_api_key is None:
                self.livekit_api_key = SecretStr(DEV_LIVEKIT_API_KEY)
            if self.livekit_api_secret is None:
                self.livekit_api_secret = SecretStr(DEV_LIVEKIT_API_SECRET)
            if self.dispatch_signing_secret is None:
                self.dispatch_signing_secret = SecretStr(DEV_DISPATCH_SIGNING_SECRET)
        return self

    @model_validator(mode="after")
    def _default_prometheus_port(self) -> Settings:
        if self.prometheus_port is None and self.mode is Mode.PRODUCTION:
            self.prometheus_port = DEFAULT_PROMETHEUS_PORT
        return self

    @property
    def call_capacity(self) -> int:
        """WORKER_CALL_CAPACITY, or the density benchmark's figure for the executor."""
        return self.worker_call_capacity or DEFAULT_WORKER_CALL_CAPACITY[self.job_executor]

    @property
    def metrics_port(self) -> int | None:
        """The Prometheus port to serve, or None when metrics are off."""
        return self.prometheus_port or None

    @property
    def is_dev(self) -> bool:
        return self.mode is Mode.DEV

    def require_production_secrets(self, *, dev_hint: str = DEV_MODE_HINT) -> None:
        """Fail fast: raise SettingsError with one line per unusable secret (never its value).

        `dev_hint` says how to get dev mode from the command at hand (`voice-worker start` is production by
        definition; its alternative is `voice-worker dev`)."""
        if self.is_dev:
            return
        how = {
            "LIVEKIT_API_KEY": "set it to your LiveKit project's API key",
            "LIVEKIT_API_SECRET": "set it to your LiveKit project's API secret",
            "DISPATCH_SIGNING_SECRET": f"set it to a random string of at least {_MIN_SIGNING_SECRET_LEN} characters "
            '(python -c "import secrets; print(secrets.token_urlsafe(48))")',
        }
        problems: list[str] = []
        for env, value in (
            ("LIVEKIT_API_KEY", self.livekit_api_key),
            ("LIVEKIT_API_SECRET", self.livekit_api_secret),
            ("DISPATCH_SIGNING_SECRET", self.dispatch_signing_secret),
        ):
            if value is None:
                problems.append(f"{env} is not set (production mode): {how[env]}, {dev_hint}")
            elif value.get_secret_value().strip().lower() in _PLACEHOLDERS:
                problems.append(f"{env} is a placeholder (production mode): {how[env]}, {dev_hint}")
        signing = self.dispatch_signing_secret.get_secret_value() if self.dispatch_signing_secret else ""
        if signing == DEV_DISPATCH_SIGNING_SECRET:
            problems.append(
                f"DISPATCH_SIGNING_SECRET is the dev-only default (production mode): {how['DISPATCH_SIGNING_SECRET']}"
            )
        elif signing and signing.strip().lower() not in _PLACEHOLDERS and len(signing) < _MIN_SIGNING_SECRET_LEN:
            problems.append(
                f"DISPATCH_SIGNING_SECRET is shorter than {_MIN_SIGNING_SECRET_LEN} characters: "
                f"{how['DISPATCH_SIGNING_SECRET']}"
            )
        if signing and self.livekit_api_secret is not None and signing == self.livekit_api_secret.get_secret_value():
            problems.append(
                "DISPATCH_SIGNING_SECRET equals LIVEKIT_API_SECRET; use a distinct secret so a leaked "
                "LiveKit secret cannot forge dispatches"
            )
        if problems:
            raise SettingsError(*problems)

    def signing_secret(self) -> str:
        if self.dispatch_signing_secret is None:
            raise SettingsError(
                "DISPATCH_SIGNING_SECRET is not set (production mode): set it to a random string of at least "
                f"{_MIN_SIGNING_SECRET_LEN} characters, {DEV_MODE_HINT}"
            )
        return self.dispatch_signing_secret.get_secret_value()

    def livekit_credentials(self) -> tuple[str, str]:
        if self.livekit_api_key is None or self.livekit_api_secret is None:
            missing = "LIVEKIT_API_KEY" if self.livekit_api_key is None else "LIVEKIT_API_SECRET"
            raise SettingsError(
                f"{missing} is not set (production mode): set it from your LiveKit project, {DEV_MODE_HINT}"
            )
        return self.livekit_api_key.get_secret_value(), self.livekit_api_secret.get_secret_value()

    def provider_api_key(self, env_name: str) -> str | None:
        """The key for a provider, by the environment variable that names it."""
        field = {
            "OPENAI_API_KEY": self.openai_api_key,
            "DEEPGRAM_API_KEY": self.deepgram_api_key,
            "OPENAI_COMPATIBLE_API_KEY": self.openai_compatible_api_key,
        }.get(env_name)
        return field.get_secret_value() if field is not None else None


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and `.env` (overrides by variable name), or SettingsError with one line per
    invalid variable: its name, pydantic's reason and where to fix it. The input is never echoed (a secret)."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False, include_input=False):
            variable = ".".join(map(str, error["loc"])) or "settings"
            reason = str(error["msg"]).rstrip(".")
            problems.append(f"{variable}: {reason}; fix {variable} in .env or the environment (see .env.example)")
        raise SettingsError(*problems) from None


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
