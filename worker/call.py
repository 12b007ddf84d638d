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
from livekit.agents.voice.events import CloseEvent, CloseReason

from catalog.loader import CatalogStore
from catalog.pipeline_config import VoicePipelineConfig
from procedures.agent import CallAgent
from procedures.router import RouterModels
from procedures.supervisor import Supervision, Supervisor
from procedures.team import TeamCall
from procedures.templates import render
from procedures.variables import CallVariables
from worker.admission import Admission, admit
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
    CloseReason.USER_INITIATED: "agent_initiated",
    CloseReason.TASK_COMPLETED: "pipeline_exit",
}

SessionFactory = Callable[[VoicePipelineConfig], dict[str, Any]]


@dataclass
class CallServices:
    """What a call needs from its process. `session_kwargs` turns a pipeline config into AgentSession kwargs."""

    settings: Settings
    catalog: CatalogStore
    session_kwargs: SessionFactory


@dataclass
class Call:
    admission: Admission
    variables: CallVariables
    session: AgentSession
    agent: CallAgent
    started_at: datetime
    job_id: str
    end_reason: str | None = None
    ended_at: datetime | None = None
    # Procedure choice and team member changes, for the session record (procedures/supervisor.py).
    supervision: Supervision = field(default_factory=Supervision)
    _closed: asyncio.Event = field(default_factory=asyncio.Event)

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
    before_start: Callable[[AgentSession], None] | None = None,
) -> Call:
    """Bootstrap a call from the job's metadata; raises `DispatchRejected` for a dispatch it cannot serve."""
    entered = time.perf_counter()
    settings = services.settings
    claims = verify_dispatch_metadata(
        ctx.job.metadata, secret=settings.signing_secret(), issuer=settings.dispatch_issuer
    )
    admission = admit(claims, services.catalog.get(), settings)
    revision = admission.revision
    system_values: dict[str, Any] = {
        "session_id": str(claims.session_id),
        "session_type": claims.session_type,
        "agent_id": str(admission.agent.id),
        "team_id": str(admission.team.id) if admission.team else None,
    }
    variables = CallVariables.bootstrap(
        revision.context_variables,
        defaults=revision.variable_defaults,
        seeds=admission.seeds,
        system=system_values,
    )
    session: AgentSession = AgentSession(**services.session_kwargs(admission.pipeline))
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
            agents=services.catalog.get().agents,
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
    )
    call_ref.append(call)
    session.on("close", call._on_close)
    if before_start is not None:
        before_start(session)

    if room is not None:
        await session.start(agent=agent, room=room)
    else:  # text mode / tests / console: no room IO at all
        await session.start(agent=agent)
    _greet(call)
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
