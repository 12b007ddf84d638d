"""One call, from verified dispatch to closed session: the composition root of a job.

`start_call()` is shared by the LiveKit entrypoint (with the job's room), the console and the tests (without a
room): verify the grant again, admit it against the catalog, seed the variables once, build the session from
the pipeline config, start the agent and greet. `Call` then tracks how the call ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from livekit import rtc
from livekit.agents import AgentSession, JobContext, llm
from livekit.agents.voice.events import CloseEvent, CloseReason, ConversationItemAddedEvent

from catalog.loader import CatalogStore
from catalog.pipeline_config import VoicePipelineConfig
from pipelines.call_limits import CallLimits
from procedures.agent import CallAgent
from procedures.router import RouterModels
from procedures.supervisor import Supervision, Supervisor
from procedures.team import TeamCall
from procedures.templates import render
from procedures.variables import CallVariables
from records.history import transcript_from_history, turn_metrics_from_history
from records.outcome import MemberChange, ProcedureChoice, SessionOutcome
from records.store import SessionStore
from worker import logcontext, metrics
from worker.admission import Admission, admit, llm_only_pipeline_check
from worker.call_status import publish_call_status
from worker.dispatch import verify_dispatch_metadata
from worker.settings import Settings

log = logging.getLogger("voice_worker.call")

# Used when a dynamic greeting has no instructions of its own (the platform's behaviour).
DEFAULT_DYNAMIC_GREETING = "Greet the caller warmly in one short sentence and ask how you can help."

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

# A pipeline config → AgentSession kwargs: either a plain dict (tests, benchmarks) or an object with
# `session_kwargs()` and `aclose()` (pipelines.builder.BuiltPipeline), closed when the call ends.
SessionFactory = Callable[[VoicePipelineConfig], Any]

# Memory lookup must never hold the greeting for long; a slow store means this call starts without memory.
MEMORY_LOOKUP_TIMEOUT_S = 0.5


@dataclass
class CallServices:
    """What a call needs from its process."""

    settings: Settings
    catalog: CatalogStore
    session_kwargs: SessionFactory
    # Session records and end-user memory; None runs calls without a store (console, some tests).
    store: SessionStore | None = None
    # Text-only sessions (console) need only the LLM chain to be usable, not STT/TTS keys.
    text_only: bool = False


@dataclass
class Call:
    admission: Admission
    variables: CallVariables
    session: AgentSession[None]
    agent: CallAgent
    started_at: datetime
    job_id: str
    end_reason: str | None = None
    ended_at: datetime | None = None
    # Procedure choice and team member changes, for the session record (procedures/supervisor.py).
    supervision: Supervision = field(default_factory=Supervision)
    end_user_id: str | None = None
    # What the pipeline factory built, when it owns provider clients to close at the end.
    resources: Any = None
    limits: CallLimits | None = None
    _closed: asyncio.Event = field(default_factory=asyncio.Event)
    _background: set[asyncio.Task[Any]] = field(default_factory=set)
    # set once the call counts as active in the metrics; cleared when its end was counted
    _counted: bool = False

    def _count_active(self) -> None:
        metrics.call_started(self.admission.claims.session_type)
        self._counted = True

    def record_end(self, reason: str) -> None:
        """The first reason recorded wins: an agent that ends the call is not later a 'participant_left'."""
        if self.end_reason is None:
            self.end_reason = reason

    def _on_close(self, event: CloseEvent) -> None:
        self.record_end(_CLOSE_REASONS.get(event.reason, "unknown"))
        if event.error is not None:
            log.error("call %s closed on error: %s", self.admission.claims.session_id, event.error)
        self.ended_at = datetime.now(UTC)
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def _spawn(self, coro: Any, what: str) -> None:
        task = asyncio.create_task(coro, name=f"call-{what}")
        self._background.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("call %s: %s failed: %r", self.admission.claims.session_id, what, t.exception())

        task.add_done_callback(done)

    async def finish(self, reason: str = "server_shutdown") -> None:
        """End the session if it still runs (job terminated, worker draining) and release what the call holds."""
        if not self.closed:
            self.record_end(reason)
            await self.session.aclose()
        if self.limits is not None:
            await self.limits.aclose()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self.resources is not None:
            await self.resources.aclose()
            self.resources = None
        if self._counted:
            self._counted = False
            metrics.call_ended(
                self.admission.claims.session_type, self.end_reason or "unknown", self.supervision.decisions
            )

    def outcome(self) -> SessionOutcome:
        """Everything known about the call, for the session record and post-call processing."""
        admission, claims = self.admission, self.admission.claims
        procedure = self.supervision.procedure_record()
        team = admission.team
        return SessionOutcome(
            session_id=claims.session_id,
            session_type=claims.session_type,
            agent_id=None if team else admission.agent.id,
            team_id=team.id if team else None,
            revision_id=None if team else admission.revision.id,
            end_user_id=self.end_user_id,
            started_at=self.started_at,
            ended_at=self.ended_at or datetime.now(UTC),
            end_reason=self.end_reason or "unknown",
            procedure=ProcedureChoice(**procedure) if procedure else None,
            member_changes=[MemberChange(**m) for m in self.supervision.member_change_records()],
            transcript=transcript_from_history(self.session.history),
            turn_metrics=turn_metrics_from_history(self.session.history),
            usage=_usage(self.session),
            summary_instructions=(team.summary_instructions if team else admission.revision.summary_instructions),
        )

    @property
    def log_context(self) -> dict[str, str]:
        claims = self.admission.claims
        return {
            "session_id": str(claims.session_id),
            "agent_id": str(self.admission.agent.id),
            "job_id": self.job_id,
        }


async def start_call(
    ctx: JobContext,
    services: CallServices,
    *,
    room: rtc.Room | None,
    before_start: Callable[[AgentSession[None]], None] | None = None,
) -> Call:
    """Bootstrap a call from the job's metadata; raises `DispatchRejected` for a dispatch it cannot serve."""
    entered = time.perf_counter()
    settings = services.settings
    # from here on every log record of this task and of the tasks it creates carries the call's ids
    logcontext.bind(job_id=ctx.job.id)
    claims = verify_dispatch_metadata(
        ctx.job.metadata, secret=settings.signing_secret(), issuer=settings.dispatch_issuer
    )
    catalog = services.catalog.get()
    admission = admit(
        claims, catalog, settings, **({"pipeline_check": llm_only_pipeline_check} if services.text_only else {})
    )
    call_fields = {"session_id": str(claims.session_id), "agent_id": str(admission.agent.id), "job_id": ctx.job.id}
    logcontext.bind(**call_fields)
    # livekit's own job log filter adds them to the job's records outside this task tree (shutdown sequence)
    ctx.log_context_fields.update(call_fields)
    revision = admission.revision
    system_values: dict[str, Any] = {
        "session_id": str(claims.session_id),
        "session_type": claims.session_type,
        "agent_id": str(admission.agent.id),
        "team_id": str(admission.team.id) if admission.team else None,
        "end_user_id": claims.end_user_id,
    }
    variables = CallVariables.bootstrap(
        revision.context_variables,
        defaults=revision.variable_defaults,
        seeds=admission.seeds,
        system=system_values,
    )
    built = services.session_kwargs(admission.pipeline)
    resources = None if isinstance(built, dict) else built
    session: AgentSession[None] = AgentSession(**(built if isinstance(built, dict) else built.session_kwargs()))
    call_ref: list[Call] = []

    def record_end(reason: str) -> None:
        if call_ref:
            call_ref[0].record_end(reason)

    supervision = Supervision()
    session_llm = session.llm if isinstance(session.llm, llm.LLM) else None
    router_models = RouterModels(settings, default=session_llm)
    ctx.add_shutdown_callback(router_models.aclose)
    agent: CallAgent
    if admission.team is not None:
        team_call = TeamCall(
            team=admission.team,
            agents=catalog.agents,
            system_values=system_values,
            on_end=record_end,
            router_models=router_models,
            supervision=supervision,
            initial_variables=variables,
        )
        agent = team_call.initial_agent()
    else:
        supervisor = Supervisor.for_revision(
            revision,
            router_model=router_models(revision.router_model_settings),
            record=supervision,
            agent_id=admission.agent.id,
        )
        agent = CallAgent(revision=revision, variables=variables, on_end=record_end, supervisor=supervisor)
    call = Call(
        admission=admission,
        variables=variables,
        session=session,
        agent=agent,
        started_at=datetime.now(UTC),
        job_id=ctx.job.id,
        supervision=supervision,
        end_user_id=claims.end_user_id,
        resources=resources,
    )
    call_ref.append(call)
    memory = await _known_facts(services.store, claims.end_user_id, claims.session_type)
    if memory:
        await agent.update_chat_ctx(_with_memory(agent.chat_ctx, memory))
    session.on("close", call._on_close)
    session.on("conversation_item_added", _observe_turn)
    if resources is not None:
        metrics.watch_fallbacks(
            getattr(resources, "stt", None), getattr(resources, "llm", None), getattr(resources, "tts", None)
        )
    if before_start is not None:
        before_start(session)

    if room is not None:
        await session.start(agent=agent, room=room)
    else:  # text mode / tests / console: no room IO at all
        await session.start(agent=agent)
    call._count_active()
    if room is not None:
        # procedure, context variables and turn latencies as the agent's attributes, for the call page
        publish_call_status(call, room.local_participant)
    _greet(call)
    call.limits = CallLimits(session, admission.pipeline, on_end=record_end_and_close(call))
    call.limits.start()
    if services.store is not None:
        # The door usually created the row already; LiveKit's dispatch API or the console did not.
        call._spawn(
            services.store.mark_started(
                claims.session_id,
                session_type=claims.session_type,
                revision_id=None if admission.team else revision.id,
                agent_id=None if admission.team else admission.agent.id,
                team_id=admission.team.id if admission.team else None,
                end_user_id=claims.end_user_id,
                context_variables=admission.seeds or None,
                started_at=call.started_at,
            ),
            "mark-started",
        )
    log.info(
        "call started: %s %s (%s) session_type=%s in %.1f ms",
        "team" if admission.team else "agent",
        admission.team.name if admission.team else admission.agent.name,
        admission.team.id if admission.team else admission.agent.id,
        claims.session_type,
        (time.perf_counter() - entered) * 1000,
        extra=call.log_context,
    )
    return call


def _observe_turn(event: ConversationItemAddedEvent) -> None:
    item = event.item
    if isinstance(item, llm.ChatMessage) and item.role == "assistant" and item.metrics:
        metrics.observe_turn(dict(item.metrics))


def _greet(call: Call) -> None:
    """The opening turn of `first_speaking`: disclosure (never interruptible), then static or dynamic greeting."""
    first = call.admission.pipeline.first_speaking
    values = call.variables.template_values()
    if first.ai_disclosure_text:
        call.session.say(render(first.ai_disclosure_text, values), allow_interruptions=False)
    if first.first_speaker != "agent":
        return
    if first.mode == "static" and first.text:
        call.session.say(render(first.text, values), allow_interruptions=first.interruptible)
    else:
        instructions = render(first.instructions, values) if first.instructions else DEFAULT_DYNAMIC_GREETING
        call.session.generate_reply(instructions=instructions, allow_interruptions=first.interruptible)


def record_end_and_close(call: Call) -> Callable[[str], None]:
    """What CallLimits calls: the platform reason first, then the session ends (after any closing words)."""

    def on_end(reason: str) -> None:
        call.record_end(reason)
        call.session.shutdown(drain=True)

    return on_end


async def _known_facts(store: SessionStore | None, end_user_id: str | None, session_type: str) -> list[str]:
    # Test sessions leave memory untouched, and they do not read it either: a test call behaves like a first call.
    if store is None or not end_user_id or session_type == "test":
        return []
    try:
        return await asyncio.wait_for(store.facts_for(end_user_id), MEMORY_LOOKUP_TIMEOUT_S)
    except Exception as exc:  # a memory outage must not stop the call
        log.warning("memory lookup for the caller failed (%s); the call starts without memory", type(exc).__name__)
        return []


def _with_memory(chat_ctx: llm.ChatContext, facts: list[str]) -> llm.ChatContext:
    updated = chat_ctx.copy()
    updated.add_message(
        role="system",
        content="What we know about this caller from earlier calls (use it naturally, do not recite it):\n"
        + "\n".join(f"- {fact}" for fact in facts),
    )
    return updated


def _usage(session: AgentSession[None]) -> dict[str, Any]:
    try:
        return {"model_usage": [u.model_dump(mode="json") for u in session.usage.model_usage]}
    except Exception:  # usage shapes vary by provider; the record must not fail for it
        return {}
