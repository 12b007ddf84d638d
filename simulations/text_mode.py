"""Text mode: a scenario through the real call bootstrap and `AgentSession`, without a room or audio.

The call starts exactly as a job does (`calls.bootstrap.start_call`: the signed grant with `session_type:
simulation`, admission, variables, the supervisor, the revision's tools), on the target pipeline's own LLM chain
(no STT/TTS: text goes in, text comes out). Each caller turn is `session.run(user_input=...)`; a scripted caller
reads its turns, a persona caller is asked for each line. When the caller is done it hangs up, and the call ends
as a caller leaving (`participant_left`) unless the agent ended it first.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from livekit.agents import AgentSession, get_job_context, llm
from livekit.agents.testing import fake_job_context
from livekit.agents.voice.events import ConversationItemAddedEvent

from calls.bootstrap import start_call
from calls.call import Call, CallServices
from calls.state import CallState
from catalog.loader import CatalogStore
from catalog.pipeline_config import VoicePipelineConfig
from contract.dispatch import DispatchRejected, DispatchRequest, mint_dispatch_metadata
from contract.session_type import SessionType
from pipelines.builder import build_llm, session_connect_options
from pipelines.providers import SettingsWithKeys
from simulations.expectations import evaluate
from simulations.judge import judge_item
from simulations.models import ModelFactory, model_entry
from simulations.persona import PersonaCaller
from simulations.results import Line, Observed, ScenarioResult, ToolCall, TurnLatency
from simulations.scenario import Scenario, ScenarioFile

# A turn that takes longer is a hung provider, not a slow agent: the scenario fails with a timeout.
TURN_TIMEOUT_S = 60.0
GREETING_TIMEOUT_S = 15.0


def text_session_kwargs(settings: SettingsWithKeys) -> Callable[[VoicePipelineConfig], dict[str, Any]]:
    """The target pipeline's model chain only: a text conversation needs no STT, TTS or their keys."""

    def factory(config: VoicePipelineConfig) -> dict[str, Any]:
        return {"llm": build_llm(config, settings), "conn_options": session_connect_options(config)}

    return factory


@dataclass
class TextRunner:
    services: CallServices
    models: ModelFactory

    @classmethod
    def from_settings(cls, settings: Any, models: ModelFactory) -> TextRunner:
        services = CallServices(
            settings=settings,
            catalog=CatalogStore(settings.catalog_path),
            session_kwargs=text_session_kwargs(settings),
            text_only=True,
        )
        return cls(services=services, models=models)

    async def run(self, file: ScenarioFile) -> ScenarioResult:
        scenario = file.scenario
        started = time.perf_counter()
        result = ScenarioResult.begin(file, "text")
        try:
            await self._run(scenario, result)
        except DispatchRejected as exc:
            result.error = f"the dispatch was refused: {exc.reason}: {exc.detail}"
        except TimeoutError:
            result.error = f"a turn took longer than {TURN_TIMEOUT_S:.0f} s"
        except Exception as exc:  # a provider or a tool failing ends this scenario, never the whole run
            result.error = f"{type(exc).__name__}: {exc}"
        result.duration_s = time.perf_counter() - started
        return result

    async def _run(self, scenario: Scenario, result: ScenarioResult) -> None:
        settings = self.services.settings
        session_id = uuid.uuid4()
        result.session_id = str(session_id)
        metadata = mint_dispatch_metadata(
            DispatchRequest(
                session_id=session_id,
                session_type=SessionType.SIMULATION,
                agent_id=scenario.agent_id,
                team_id=scenario.team_id,
                context_variables=scenario.context_variables or None,
            ),
            secret=settings.signing_secret(),
            issuer=settings.dispatch_issuer,
        )
        added: list[tuple[float, Any]] = []

        def before_start(session: AgentSession[CallState]) -> None:
            def on_item(event: ConversationItemAddedEvent) -> None:
                added.append((time.perf_counter(), event.item))

            session.on("conversation_item_added", on_item)

        with fake_job_context(job_metadata=metadata, job_id=f"simulation-{session_id.hex[:8]}"):
            call = await start_call(get_job_context(), self.services, room=None, before_start=before_start)
            try:
                observed = await self._converse(scenario, call, added)
            finally:
                if not call.closed:
                    await call.finish(reason="participant_left")
                else:
                    await call.finish()
            _read_call(call, observed)
        result.observed = observed
        result.checks = evaluate(scenario.expect, observed)
        if scenario.expect.rubric:
            judge = self.models(model_entry(scenario.judge_model, call.admission.pipeline))
            try:
                result.judges = [await judge_item(item, call.session.history, judge) for item in scenario.expect.rubric]
            finally:
                await judge.aclose()

    async def _converse(self, scenario: Scenario, call: Call, added: list[tuple[float, Any]]) -> Observed:
        observed = Observed()
        pipeline = call.admission.pipeline
        if pipeline.first_speaking.first_speaker == "agent":
            await _until(lambda: any(_assistant(item) for _, item in added), GREETING_TIMEOUT_S)
        persona: PersonaCaller | None = None
        caller_model: llm.LLM[Any] | None = None
        if not scenario.caller.scripted:
            caller_model = self.models(model_entry(scenario.caller.model, pipeline))
            persona = PersonaCaller(scenario.caller, caller_model)
        try:
            turn = 0
            while not _ended(call):
                if persona is None:
                    if turn >= len(scenario.caller.turns):
                        break
                    line = scenario.caller.turns[turn].say
                else:
                    if turn >= scenario.caller.max_turns:
                        break
                    next_line = await asyncio.wait_for(persona.next_line(_transcript(call)), TURN_TIMEOUT_S)
                    if next_line is None:
                        break
                    line = next_line
                turn += 1
                said_at = time.perf_counter()
                await asyncio.wait_for(call.session.run(user_input=line), TURN_TIMEOUT_S)
                reply_at = next((at for at, item in added if at >= said_at and _assistant(item)), None)
                observed.latencies.append(
                    TurnLatency(turn=turn, latency_ms=None if reply_at is None else (reply_at - said_at) * 1000)
                )
            observed.caller_turns = turn
        finally:
            if caller_model is not None:
                await caller_model.aclose()
        return observed


def _assistant(item: object) -> bool:
    return isinstance(item, llm.ChatMessage) and item.role == "assistant" and bool(item.text_content)


def _ended(call: Call) -> bool:
    return call.closed or call.state.end_reason is not None


async def _until(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.01)


def _transcript(call: Call) -> list[Line]:
    return [
        Line(role=item.role, text=item.text_content or "")
        for item in call.session.history.items
        if isinstance(item, llm.ChatMessage) and item.role in ("user", "assistant") and item.text_content
    ]


def _read_call(call: Call, observed: Observed) -> None:
    """What the finished call shows: the record's view (procedure, end reason, variables, handoffs) and the
    history's (transcript, every tool call with its arguments and output)."""
    observed.transcript = _transcript(call)
    decision = call.supervision.procedure
    if decision is not None:
        observed.procedure = decision.procedure.name if decision.procedure else None
        observed.procedure_reason = decision.reason
    outputs = {item.call_id: item for item in call.session.history.items if isinstance(item, llm.FunctionCallOutput)}
    for item in call.session.history.items:
        if isinstance(item, llm.FunctionCall):
            output = outputs.get(item.call_id)
            observed.tool_calls.append(
                ToolCall(
                    name=item.name,
                    arguments=_arguments(item.arguments),
                    output=output.output if output is not None else None,
                    is_error=bool(output is not None and output.is_error),
                )
            )
    observed.variables = dict(call.variables.values)
    team = call.admission.team
    if team is not None:
        names = {m.id: m.router_name for m in team.members}
        observed.handoffs = [names.get(c.to_member_id, str(c.to_member_id)) for c in call.supervision.member_changes]
    observed.end_reason = call.state.end_reason


def _arguments(raw: str) -> dict[str, Any]:
    try:
        parsed = json.loads(raw or "{}")
    except json.JSONDecodeError:
        return {"(unparsed)": raw}
    return parsed if isinstance(parsed, dict) else {"(value)": parsed}
