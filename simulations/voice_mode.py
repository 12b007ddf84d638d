"""Voice mode: a scenario dialled as a real call through LiveKit.

The simulator mints the call as the door would (`contract/tokens.py` `mint_call`, `session_type: simulation`), its
caller participant (simulations/voice_caller.py) joins the new room, LiveKit dispatches the worker registered
under AGENT_NAME, and the call runs on the real media path: the agent's STT hears the caller's TTS, the caller's
STT hears the agent's TTS. A scripted caller speaks its turns; a persona caller is asked for each line with what
it has heard so far. When the caller is done it hangs up, and the call ends as `participant_left` unless the
agent ended it first.

What the call did is read afterwards from the session record the worker wrote (DATABASE_URL: the transcript, the
procedure, handoffs, the end reason, `session_type: simulation`) and from the agent's `voice_worker.simulation`
attribute as last seen (every tool call with its arguments and the variables: calls/status.py publishes it on
simulated calls only). A turn's latency is the caller's: from the end of its speech to the first agent audio it
heard, the whole voice-to-voice path.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from livekit.agents import llm
from livekit.agents.utils import http_context

from catalog.loader import Catalog
from catalog.models import Team
from catalog.pipeline_config import VoicePipelineConfig
from contract.session_type import SessionType
from contract.settings import SharedSettings
from contract.tokens import mint_call
from records.record import SessionRecord
from records.store import SessionStore
from simulations.caller_voice import VoiceFactory, provider_voices
from simulations.expectations import evaluate
from simulations.judge import judge_item, transcript_context
from simulations.models import ModelFactory, model_entry
from simulations.persona import PersonaCaller
from simulations.results import Line, Observed, ScenarioResult, ToolCall, TurnLatency
from simulations.scenario import Scenario, ScenarioFile
from simulations.voice_caller import AgentGone, CallerParticipant, Reply

CONNECT_TIMEOUT_S = 15.0
# LiveKit dispatches when the caller joins; a worker that is busy starting a job process takes a few seconds
AGENT_JOIN_TIMEOUT_S = 30.0
# a reply that has not started by then is a hung agent, not a slow one
REPLY_TIMEOUT_S = 30.0
# the caller's own TTS and persona LLM, per line
LINE_TIMEOUT_S = 60.0
# quiet this long with the agent neither thinking nor speaking: its reply is over
SETTLE_S = 0.8
# how long the caller's STT may take to give the final of a reply's last words
STT_WAIT_S = 3.0
# the worker writes the record after the session closed (it may still be speaking its last words)
RECORD_TIMEOUT_S = 30.0

SIMULATION_ATTRIBUTE = "voice_worker.simulation"


class CallProblem(Exception):
    """The call could not go on as a conversation (no agent, no reply, no record): the scenario fails with it."""


@dataclass
class VoiceRunner:
    settings: SharedSettings
    catalog: Catalog
    models: ModelFactory
    voices: VoiceFactory

    @classmethod
    def from_settings(cls, settings: SharedSettings, catalog: Catalog, models: ModelFactory) -> VoiceRunner:
        return cls(settings=settings, catalog=catalog, models=models, voices=provider_voices(settings))

    async def run(self, file: ScenarioFile) -> ScenarioResult:
        scenario = file.scenario
        started = time.perf_counter()
        result = ScenarioResult.begin(file, "voice")
        try:
            await self._run(scenario, result)
        except CallProblem as exc:
            result.error = str(exc)
        except Exception as exc:  # a provider, LiveKit or the database failing ends this scenario, not the run
            result.error = f"{type(exc).__name__}: {exc}"
        result.duration_s = time.perf_counter() - started
        return result

    def _pipeline(self, scenario: Scenario) -> tuple[VoicePipelineConfig, Team | None]:
        if scenario.team_id is not None:
            team = self.catalog.teams[scenario.team_id]
            return team.pipeline, team
        assert scenario.agent_id is not None  # the schema requires one of the two
        return self.catalog.agents[scenario.agent_id].active_revision.pipeline, None

    async def _run(self, scenario: Scenario, result: ScenarioResult) -> None:
        pipeline, team = self._pipeline(scenario)
        minted = mint_call(
            self.settings,
            session_type=SessionType.SIMULATION,
            agent_id=scenario.agent_id,
            team_id=scenario.team_id,
            context_variables=scenario.context_variables or None,
        )
        result.session_id = str(minted.session_id)
        observed = Observed()
        voice, ears = self.voices(scenario.caller.voice, pipeline)
        caller_model: llm.LLM[Any] | None = None
        attributes: dict[str, str] = {}
        try:
            persona: PersonaCaller | None = None
            if not scenario.caller.scripted:
                caller_model = self.models(model_entry(scenario.caller.model, pipeline))
                persona = PersonaCaller(scenario.caller, caller_model)
            # the Deepgram plugins take livekit's per-job HTTP session: this process is not a job
            async with http_context.open():
                caller = CallerParticipant(minted.livekit_url, minted.access_token, voice, ears)
                try:
                    await caller.connect(CONNECT_TIMEOUT_S)
                    if not await caller.wait_agent(AGENT_JOIN_TIMEOUT_S):
                        raise CallProblem(
                            f"no agent joined the room within {AGENT_JOIN_TIMEOUT_S:.0f} s: is a worker registered "
                            f"as AGENT_NAME={self.settings.agent_name} at LIVEKIT_URL, with this DISPATCH_SIGNING_"
                            "SECRET and catalog? (a refused dispatch is in the worker's log)"
                        )
                    try:
                        await self._converse(scenario, pipeline, caller, persona, observed)
                    except CallProblem as exc:
                        result.error = str(exc)  # the record still says what the call did until then
                    if caller.stt_error is not None:
                        observed.unobservable["heard"] = f"the caller's STT failed: {caller.stt_error}"
                        if persona is not None:
                            result.error = result.error or f"the persona caller went deaf: {caller.stt_error}"
                finally:
                    attributes = dict(caller.agent_attributes)
                    await caller.hang_up()
        finally:
            await asyncio.gather(
                voice.aclose(),
                ears.aclose(),
                *([caller_model.aclose()] if caller_model else []),
                return_exceptions=True,
            )
        record = await self._record(minted.session_id)
        observe_record(record, attributes.get(SIMULATION_ATTRIBUTE), team, observed)
        result.observed = observed
        result.checks = evaluate(scenario.expect, observed)
        if scenario.expect.rubric:
            judge = self.models(model_entry(scenario.judge_model, pipeline))
            try:
                context = transcript_context(observed.transcript)
                result.judges = [await judge_item(item, context, judge) for item in scenario.expect.rubric]
            finally:
                await judge.aclose()

    async def _converse(
        self,
        scenario: Scenario,
        pipeline: VoicePipelineConfig,
        caller: CallerParticipant,
        persona: PersonaCaller | None,
        observed: Observed,
    ) -> None:
        heard = observed.heard
        assert caller.connected_at is not None
        try:
            if pipeline.first_speaking.first_speaker == "agent":
                greeting = await self._reply(caller, caller.connected_at)
                if greeting is None:
                    raise CallProblem(f"the agent did not greet within {REPLY_TIMEOUT_S:.0f} s")
                if greeting.text:
                    heard.append(Line(role="assistant", text=greeting.text))
            turn = 0
            while not caller.agent_left:
                if persona is None:
                    if turn >= len(scenario.caller.turns):
                        break
                    line: str | None = scenario.caller.turns[turn].say
                else:
                    if turn >= scenario.caller.max_turns:
                        break
                    line = await asyncio.wait_for(persona.next_line(list(heard)), LINE_TIMEOUT_S)
                if line is None:
                    break
                turn += 1
                said_at = await caller.say(line, LINE_TIMEOUT_S)
                heard.append(Line(role="user", text=line))
                observed.caller_turns = turn
                reply = await self._reply(caller, said_at)
                latency = None if reply is None else (reply.first_audio_at - said_at) * 1000
                observed.latencies.append(TurnLatency(turn=turn, latency_ms=latency))
                if reply is None:
                    raise CallProblem(f"the agent did not answer caller turn {turn} within {REPLY_TIMEOUT_S:.0f} s")
                if reply.text:
                    heard.append(Line(role="assistant", text=reply.text))
        except AgentGone:
            return  # the agent ended the call: what it did is in the record

    async def _reply(self, caller: CallerParticipant, since: float) -> Reply | None:
        return await caller.hear_reply(since, timeout=REPLY_TIMEOUT_S, settle_s=SETTLE_S, stt_wait_s=STT_WAIT_S)

    async def _record(self, session_id: uuid.UUID) -> SessionRecord:
        store = SessionStore.from_settings(self.settings)
        try:
            deadline = time.monotonic() + RECORD_TIMEOUT_S
            while time.monotonic() < deadline:
                record = await store.get(session_id)
                if record is not None and record.end_reason is not None:
                    return record
                await asyncio.sleep(0.25)
        finally:
            await store.aclose()
        raise CallProblem(
            f"the worker wrote no finished session record for {session_id} within {RECORD_TIMEOUT_S:.0f} s: voice "
            "mode reads the worker's records, so DATABASE_URL here must be the worker's database"
        )


def observe_record(record: SessionRecord, simulation: str | None, team: Team | None, observed: Observed) -> None:
    """The session record's view of the call (transcript, procedure, handoffs, end reason) and the agent's
    `voice_worker.simulation` attribute's (tool calls with arguments, variables) into `observed`."""
    observed.transcript = [
        Line(role=item.role, text=item.text) for item in record.transcript if item.role in ("user", "assistant")
    ]
    if record.procedure is not None:
        observed.procedure = record.procedure.name
        observed.procedure_reason = record.procedure.reason
    if team is not None:
        names = {m.id: m.router_name for m in team.members}
        observed.handoffs = [names.get(c.to_member_id, str(c.to_member_id)) for c in record.member_changes]
    observed.end_reason = record.end_reason.value if record.end_reason is not None else None
    published = _simulation_attribute(simulation)
    if published is None:
        why = "the agent published no voice_worker.simulation attribute (is the worker older than this simulator?)"
        observed.unobservable.update(tools=why, variables=why)
        # the record keeps platform tool runs, by name: shown, not checked
        observed.tool_calls = [ToolCall(name=t.name, is_error=t.status != "ok") for t in record.tool_calls]
        observed.tool_arguments_seen = False
        return
    tool_calls, variables = published
    observed.tool_calls = tool_calls
    observed.variables = variables


def _simulation_attribute(raw: str | None) -> tuple[list[ToolCall], dict[str, Any]] | None:
    if not raw:
        return None
    try:
        document = json.loads(raw)
        calls = [
            ToolCall(name=str(c["name"]), arguments=_arguments(c.get("arguments"))) for c in document["tool_calls"]
        ]
        variables = dict(document["variables"])
    except (ValueError, KeyError, TypeError):
        return None
    return calls, variables


def _arguments(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    return {} if value is None else {"(value)": value}
