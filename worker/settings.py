"""The worker process's settings: post-call, the outbox, health, metrics, capacity and drain, on top of what it
shares with the door (contract/settings.py). Read from the environment and `.env`, built lazily
(`get_settings()`), never at import time, so tests and the CLI can construct their own.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from contract.settings import Mode, SharedSettings, load
from tools.ssrf import EgressPolicy
from worker.event_loop import EventLoopKind

DEFAULT_PROMETHEUS_PORT = 9100
# Concurrent calls one worker holds before its turn latency degrades, by JOB_EXECUTOR: the density benchmark's
# "calls held" on a 2-core machine (benchmarks/density.py, README "Performance"). A thread-executor worker is
# one process, bound by the GIL to about one core whatever the machine; a process-executor worker spreads its
# calls over every core of its machine (the CPU term of the load covers machines unlike the benchmark's).
DEFAULT_WORKER_CALL_CAPACITY = {"thread": 20, "process": 30}


class Settings(SharedSettings):
    # --- post-call (postcall/) ---
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

    health_port: int = Field(8081, ge=0, le=65535, validation_alias="HEALTH_PORT")
    health_host: str = Field("0.0.0.0", validation_alias="HEALTH_HOST")

    # --- fleet operations: metrics, capacity, drain (telemetry/metrics.py, worker/capacity.py) ---
    # Unset: 9100 in production, off in dev (a laptop or a test run need no fixed port); 0 turns it off.
    prometheus_port: int | None = Field(None, ge=0, le=65535, validation_alias="PROMETHEUS_PORT")
    # Concurrent calls one worker takes (active plus accepted offers) before latency degrades; unset:
    # DEFAULT_WORKER_CALL_CAPACITY for the executor (see `call_capacity`).
    worker_call_capacity: int | None = Field(None, ge=1, le=10_000, validation_alias="WORKER_CALL_CAPACITY")
    # How a worker runs its calls (docs/operations.md, "Executor and density"): "process" gives every call a
    # process of its own (livekit's default: a crash ends one call; ~79 MB per call); "thread" runs every call
    # as a thread of the worker process, sharing its models (~2.5 MB per call; a crash ends the worker's calls).
    job_executor: Literal["process", "thread"] = Field("process", validation_alias="JOB_EXECUTOR")
    # The calls' event loop (worker/event_loop.py): uvloop, or asyncio's own to rule uvloop out when debugging.
    event_loop: EventLoopKind = Field("uvloop", validation_alias="EVENT_LOOP")
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

    # --- platform tools (tools/; docs/tools.md) ---
    # Networks (CIDR) and host names (`orders.internal`, `*.corp.example`) api_call tools may reach although they
    # are not public addresses; comma-separated. Everything else non-public is refused (dev mode allows loopback).
    tool_egress_allowlist: str = Field("", max_length=4096, validation_alias="TOOL_EGRESS_ALLOWLIST")
    # `{{env.NAME}}` in a secure header or query value reads only names with this prefix, so a catalog cannot send
    # the worker's own secrets (LIVEKIT_API_SECRET, DISPATCH_SIGNING_SECRET...) anywhere.
    tool_env_prefix: str = Field("TOOL_", min_length=2, max_length=32, validation_alias="TOOL_ENV_PREFIX")
    # A tool answer larger than this is refused (bytes, after decompression).
    tool_max_response_bytes: int = Field(1_000_000, ge=1_024, le=50_000_000, validation_alias="TOOL_MAX_RESPONSE_BYTES")
    # What the model reads of a tool's result at most (characters of JSON): it costs tokens and time every turn.
    tool_max_result_chars: int = Field(4_000, ge=200, le=100_000, validation_alias="TOOL_MAX_RESULT_CHARS")
    # A tool still running after this many milliseconds of silence gets the filler line; 0 turns it off.
    tool_filler_after_ms: int = Field(1_500, ge=0, le=60_000, validation_alias="TOOL_FILLER_AFTER_MS")
    tool_filler_text: str = Field(
        "One moment while I look that up.", min_length=1, max_length=200, validation_alias="TOOL_FILLER_TEXT"
    )
    # The LiveKit outbound SIP trunk (ST_...) a warm transfer dials its destination through.
    sip_outbound_trunk_id: str | None = Field(None, max_length=128, validation_alias="SIP_OUTBOUND_TRUNK_ID")

    @field_validator("tool_egress_allowlist")
    @classmethod
    def _allowlist_parses(cls, value: str) -> str:
        EgressPolicy.from_allowlist(value.split(","), allow_loopback=False)
        return value

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


def load_settings(**overrides: Any) -> Settings:
    """The worker's settings, or SettingsError with one line per invalid variable (contract.settings.load)."""
    return load(Settings, **overrides)


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
