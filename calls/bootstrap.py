"""Starting a call from its job: verify the grant again, admit it against the catalog, seed the variables once,
build the session from the pipeline config, start the agent, greet.

`start_call()` is shared by the LiveKit entrypoint (with the job's room), the console and the tests (without a
room). It raises `DispatchRejected` for a dispatch it cannot serve.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from livekit import rtc
from livekit.agents import AgentSession, JobContext, llm
from livekit.agents.voice.events import ConversationItemAddedEvent

from calls.admission import admit, llm_only_pipeline_check
from calls.call import Call, CallServices
from calls.greeting import greet
from calls.limits import CallLimits
from calls.state import CallState
from calls.status import publish_call_status
from catalog.loader import Catalog
from catalog.variables import CallVariables
from contract.dispatch import verify_dispatch_metadata
from contract.session_type import SessionType
from pipelines.call_features import CallFeatures
from pipelines.framing import AgentFraming
from procedures.agent import CallAgent
from procedures.router import RouterModels
from procedures.supervisor import Supervisor
from procedures.team import TeamCall
from records.store import SessionStore
from telemetry import logcontext, metrics
from tools.config import ToolConfig
from tools.function_tools import CallTools
from tools.transfer import TransferLine

log = logging.getLogger("voice_worker.call")

# Memory lookup must never hold the greeting for long; a slow store means this call starts without memory.
MEMORY_LOOKUP_TIMEOUT_S = 0.5


async def start_call(
    ctx: JobContext,
    services: CallServices,
    *,
    room: rtc.Room | None,
    before_start: Callable[[AgentSession[CallState]], None] | None = None,
) -> Call:
    """Bootstrap a call from the job's metadata; raises `DispatchRejected` for a dispatch it cannot serve."""
    entered = time.perf_counter()
    settings = services.settings
    catalog = services.catalog.get()
    state, system_values = _admitted_state(ctx, services, catalog)
    admission, claims, variables = state.admission, state.claims, state.variables
    revision = admission.revision
    built = services.session_kwargs(admission.pipeline)
    resources = None if isinstance(built, dict) else built
    session = AgentSession[CallState](userdata=state, **(built if isinstance(built, dict) else built.session_kwargs()))
    session_llm = session.llm if isinstance(session.llm, llm.LLM) else None
    router_models = RouterModels(settings, default=session_llm)
    ctx.add_shutdown_callback(router_models.aclose)
    transfer_line = TransferLine(on_end=state.end, sip_outbound_trunk_id=settings.sip_outbound_trunk_id)
    platform_tools = CallTools(catalog.tools, ToolConfig.from_settings(settings), transfer_line=transfer_line)
    agent = _first_agent(state, catalog, system_values, router_models, platform_tools)
    call = Call(state=state, session=session, agent=agent, resources=resources, tools=platform_tools)
    memory = await _known_facts(services.store, claims.end_user_id, claims.session_type)
    if memory:
        await agent.update_chat_ctx(_with_memory(agent.chat_ctx, memory))
    session.on("close", call.on_close)
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
    call.count_active()
    if room is not None:
        # procedure, context variables and turn latencies as the agent's attributes, for the call page
        publish_call_status(call, room.local_participant)
    # voicemail screening first: it holds the greeting until it knows who answered
    call.features = await CallFeatures.start(
        session,
        admission.pipeline,
        room=room,
        voicemail_llm=getattr(resources, "voicemail_llm", None),
        on_end=call.end_and_close,
    )
    greet(session, admission.pipeline.first_speaking, variables)
    call.limits = CallLimits(session, admission.pipeline, on_end=call.end_and_close)
    call.limits.start()
    if services.store is not None:
        # The door usually created the row already; LiveKit's dispatch API or the console did not.
        call.spawn(
            services.store.mark_started(
                claims.session_id,
                session_type=claims.session_type,
                revision_id=None if admission.team else revision.id,
                agent_id=None if admission.team else admission.agent.id,
                team_id=admission.team.id if admission.team else None,
                end_user_id=claims.end_user_id,
                context_variables=admission.seeds or None,
                started_at=state.started_at,
            ),
            "mark-started",
        )
    log.info(
        "call started: %s %s (%s) session_type=%s in %.1f ms on %s",
        "team" if admission.team else "agent",
        admission.team.name if admission.team else admission.agent.name,
        admission.team.id if admission.team else admission.agent.id,
        claims.session_type,
        (time.perf_counter() - entered) * 1000,
        # which event loop the call really got (EVENT_LOOP, worker/event_loop.py): the module of its class
        type(asyncio.get_running_loop()).__module__.partition(".")[0],
        extra=state.log_context,
    )
    return call


def _admitted_state(ctx: JobContext, services: CallServices, catalog: Catalog) -> tuple[CallState, dict[str, Any]]:
    """The grant verified again and admitted against the catalog as it is now, the variables seeded once: the
    call's state, and the system variables every agent of the call renders with."""
    settings = services.settings
    # from here on every log record of this task and of the tasks it creates carries the call's ids
    logcontext.bind(job_id=ctx.job.id)
    claims = verify_dispatch_metadata(
        ctx.job.metadata, secret=settings.signing_secret(), issuer=settings.dispatch_issuer
    )
    admission = admit(
        claims, catalog, settings, **({"pipeline_check": llm_only_pipeline_check} if services.text_only else {})
    )
    call_fields = {"session_id": str(claims.session_id), "agent_id": str(admission.agent.id), "job_id": ctx.job.id}
    logcontext.bind(**call_fields)
    # livekit's own job log filter adds them to the job's records outside this task tree (shutdown sequence)
    ctx.log_context_fields.update(call_fields)
    system_values: dict[str, Any] = {
        "session_id": str(claims.session_id),
        "session_type": claims.session_type,
        "agent_id": str(admission.agent.id),
        "team_id": str(admission.team.id) if admission.team else None,
        "end_user_id": claims.end_user_id,
    }
    variables = CallVariables.bootstrap(
        admission.revision.context_variables,
        defaults=admission.revision.variable_defaults,
        seeds=admission.seeds,
        system=system_values,
    )
    state = CallState(admission=admission, variables=variables, job_id=ctx.job.id, started_at=datetime.now(UTC))
    return state, system_values


def _first_agent(
    state: CallState,
    catalog: Catalog,
    system_values: dict[str, Any],
    router_models: RouterModels,
    platform_tools: CallTools,
) -> CallAgent:
    """The agent the session starts with: the revision's own, supervised, or a team's initial member."""
    admission = state.admission
    framing = AgentFraming.for_pipeline(admission.pipeline, catalog.personas)
    if admission.team is not None:
        team_call = TeamCall(
            team=admission.team,
            agents=catalog.agents,
            system_values=system_values,
            on_end=state.end,
            router_models=router_models,
            supervision=state.supervision,
            initial_variables=state.variables,
            platform_tools=platform_tools,
            framing=framing,
        )
        return team_call.initial_agent()
    revision = admission.revision
    supervisor = Supervisor.for_revision(
        revision,
        router_model=router_models(revision.router_model_settings),
        record=state.supervision,
        agent_id=admission.agent.id,
    )
    return CallAgent(
        revision=revision,
        variables=state.variables,
        on_end=state.end,
        supervisor=supervisor,
        platform_tools=platform_tools,
        framing=framing,
    )


def _observe_turn(event: ConversationItemAddedEvent) -> None:
    item = event.item
    if isinstance(item, llm.ChatMessage) and item.role == "assistant" and item.metrics:
        metrics.observe_turn(dict(item.metrics))


async def _known_facts(store: SessionStore | None, end_user_id: str | None, session_type: SessionType) -> list[str]:
    # Test and simulation sessions neither read nor write memory: such a call behaves like a first call.
    if store is None or not end_user_id or session_type.suppresses_postcall:
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
