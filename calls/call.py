"""A running call, from the started session to its end: close reasons, the end of the call, releasing what it holds.

`calls.bootstrap.start_call()` builds one; the worker's entrypoint (worker/server.py), the console and the tests
wait for it to close and `finish()` it; `outcome()` is its session record (calls/outcome.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from livekit.agents import AgentSession
from livekit.agents.voice.events import CloseEvent, CloseReason

from calls.admission import Admission, AdmissionSettings
from calls.limits import CallLimits
from calls.outcome import session_outcome
from calls.state import CallState
from catalog.loader import CatalogStore
from catalog.pipeline_config import VoicePipelineConfig
from catalog.variables import CallVariables
from pipelines.call_features import CallFeatures
from procedures.agent import CallAgent
from procedures.supervisor import Supervision
from records.outcome import SessionOutcome
from records.store import SessionStore
from telemetry import metrics
from tools.config import ToolSettings
from tools.function_tools import CallTools

log = logging.getLogger("voice_worker.call")

# livekit's close reasons, in the platform's SessionTerminationReason vocabulary.
_CLOSE_REASONS = {
    CloseReason.PARTICIPANT_DISCONNECTED: "participant_left",
    CloseReason.JOB_SHUTDOWN: "server_shutdown",
    CloseReason.ERROR: "agent_error",
    # Our own endings (the end_call tool, call limits, `Call.finish`) record their reason before they close the
    # session, and the first reason wins. A user-initiated close nobody explained is livekit closing the job's
    # session at job shutdown (LiveKit ended the job, the drain timed out), before any shutdown callback runs.
    CloseReason.USER_INITIATED: "server_shutdown",
    CloseReason.TASK_COMPLETED: "pipeline_exit",
}


class BuiltSession(Protocol):
    """What a pipeline factory may return instead of plain kwargs: provider clients to close when the call ends
    (pipelines.builder.BuiltPipeline)."""

    def session_kwargs(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


# A pipeline config → AgentSession kwargs: a plain dict (tests, benchmarks) or a `BuiltSession`.
SessionFactory = Callable[[VoicePipelineConfig], "dict[str, Any] | BuiltSession"]


class CallSettings(AdmissionSettings, ToolSettings, Protocol):
    """What a call reads from its process's settings (worker/settings.py `Settings` has it all): the grant's
    secret and issuer, admission's bounds and keys, the platform tools' egress and caps."""

    dispatch_issuer: str

    def signing_secret(self) -> str: ...


@dataclass
class CallServices:
    """What a call needs from its process."""

    settings: CallSettings
    catalog: CatalogStore
    session_kwargs: SessionFactory
    # Session records and end-user memory; None runs calls without a store (console, some tests).
    store: SessionStore | None = None
    # Text-only sessions (console) need only the LLM chain to be usable, not STT/TTS keys.
    text_only: bool = False


@dataclass
class Call:
    state: CallState
    session: AgentSession[CallState]
    agent: CallAgent
    # What the pipeline factory built, when it owns provider clients to close at the end.
    resources: BuiltSession | None = None
    limits: CallLimits | None = None
    # the pipeline's behaviours beside the session (voicemail, DTMF, interruption phrases, ambience)
    features: CallFeatures | None = None
    # The revision's platform tools (tools/): their HTTP pools, and the record of every run.
    tools: CallTools | None = None
    _closed: asyncio.Event = field(default_factory=asyncio.Event)
    _background: set[asyncio.Task[Any]] = field(default_factory=set)
    # set once the call counts as active in the metrics; cleared when its end was counted
    _counted: bool = False

    @property
    def admission(self) -> Admission:
        return self.state.admission

    @property
    def variables(self) -> CallVariables:
        return self.state.variables

    @property
    def supervision(self) -> Supervision:
        return self.state.supervision

    @property
    def end_reason(self) -> str | None:
        return self.state.end_reason

    @property
    def log_context(self) -> dict[str, str]:
        return self.state.log_context

    def count_active(self) -> None:
        metrics.call_started(self.state.claims.session_type)
        self._counted = True

    def end_and_close(self, reason: str) -> None:
        """End the call for `reason` (the platform's), after anything the agent is still saying."""
        self.state.end(reason)
        self.session.shutdown(drain=True)

    def on_close(self, event: CloseEvent) -> None:
        self.state.end(_CLOSE_REASONS.get(event.reason, "unknown"))
        if event.error is not None:
            log.error("call %s closed on error: %s", self.state.claims.session_id, event.error)
        self.state.ended_at = datetime.now(UTC)
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> None:
        """Run `coro` alongside the call; `finish()` waits for it, and a failure is logged, never raised."""
        task = asyncio.create_task(coro, name=f"call-{what}")
        self._background.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("call %s: %s failed: %r", self.state.claims.session_id, what, t.exception())

        task.add_done_callback(done)

    async def finish(self, reason: str = "server_shutdown") -> None:
        """End the session if it still runs (job terminated, worker draining) and release what the call holds."""
        if not self.closed:
            self.state.end(reason)
            await self.session.aclose()
        if self.limits is not None:
            await self.limits.aclose()
        if self.features is not None:
            await self.features.aclose()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self.resources is not None:
            await self.resources.aclose()
            self.resources = None
        if self.tools is not None:
            await self.tools.aclose()
        if self._counted:
            self._counted = False
            metrics.call_ended(
                self.state.claims.session_type, self.state.end_reason or "unknown", self.state.supervision.decisions
            )

    def outcome(self) -> SessionOutcome:
        return session_outcome(self.state, self.session, self.tools.records if self.tools is not None else ())
