"""What a call shows about itself while it runs: the agent participant's attributes, for the call page.

LiveKit already carries the audio and the transcript (text streams on topic `lk.transcription`). What only the
worker knows is published here as attributes of the agent's own participant, each a JSON string, so that any
client of the room (the door's call page, the Agents Playground, a platform page) can read them from
`participant.attributes` and follow `ParticipantAttributesChanged`:

- `voice_worker.call`: `{"agent", "revision", "team", "session_type", "context_variables"}`: who answers and the
  seeded variables it got (set at start);
- `voice_worker.procedure`: `{"name", "reason", "router_latency_ms"}`: the supervisor's turn-1 choice (`name` null:
  the revision's own behaviour; `reason` one of procedures/supervisor.py's DecisionReason values);
- `voice_worker.turns`: `[{"turn", "end_of_speech_to_first_audio_ms", "llm_ttft_ms", "tts_ttfb_ms"}, ...]`: the
  last `MAX_TURNS` turns, turn 0 being the greeting (milliseconds; null where livekit measured nothing);
- `voice_worker.simulation`, on `session_type: simulation` calls only: `{"tool_calls": [{"name", "arguments"}, ...],
  "variables": {...}}`, what the session record does not keep (every tool call with its arguments, built-in ones
  too, and the call's variables) for `voice-worker simulate --mode voice` to check. Only a holder of the grant's
  signing secret can start such a call (the door mints test calls), so no live or test caller ever sees it.

Nothing secret goes in: the context variables are the ones the caller's own token carries, and the figures are
the session record's own (calls/history.py, from the same chat history). Updates follow
the conversation (livekit's `conversation_item_added`): the procedure is decided before turn 1's reply is
committed, and a turn's latencies are on the assistant message when it is added.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any, Protocol

from livekit.agents import llm

from calls.history import turn_metrics_from_history
from contract.session_type import SessionType

if TYPE_CHECKING:
    from calls.call import Call

log = logging.getLogger("voice_worker.call_status")

PREFIX = "voice_worker."
CALL = PREFIX + "call"
PROCEDURE = PREFIX + "procedure"
TURNS = PREFIX + "turns"
SIMULATION = PREFIX + "simulation"
# Attributes travel in every participant update to every client of the room: keep the lists short.
MAX_TURNS = 20
MAX_TOOL_CALLS = 50


class LocalParticipant(Protocol):
    async def set_attributes(self, attributes: dict[str, str]) -> None: ...


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def call_attribute(call: Call) -> str:
    admission = call.admission
    return _json(
        {
            "agent": admission.agent.name,
            "revision": admission.revision.name,
            "team": admission.team.name if admission.team else None,
            "session_type": admission.claims.session_type,
            "context_variables": admission.seeds,
        }
    )


def procedure_attribute(call: Call) -> str | None:
    decision = call.supervision.procedure
    if decision is None:
        return None
    latency = decision.router_latency_ms
    return _json(
        {
            "name": decision.procedure.name if decision.procedure else None,
            "reason": decision.reason,
            "router_latency_ms": None if latency is None else round(latency, 1),
        }
    )


def turns_attribute(call: Call) -> str | None:
    turns = turn_metrics_from_history(call.session.history)[-MAX_TURNS:]
    if not turns:
        return None

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value, 1)

    return _json(
        [
            {
                "turn": t.turn_index,
                "end_of_speech_to_first_audio_ms": ms(t.end_of_speech_to_first_audio_ms),
                "llm_ttft_ms": ms(t.llm_ttft_ms),
                "tts_ttfb_ms": ms(t.tts_ttfb_ms),
            }
            for t in turns
        ]
    )


def simulation_attribute(call: Call) -> str | None:
    """Tool calls (name and arguments, never outputs: a response may carry what a secret opened) and variables,
    on simulated calls only."""
    if call.admission.claims.session_type != SessionType.SIMULATION:
        return None
    tool_calls = [
        {"name": item.name, "arguments": _arguments(item.arguments)}
        for item in call.session.history.items
        if isinstance(item, llm.FunctionCall)
    ]
    return _json({"tool_calls": tool_calls[-MAX_TOOL_CALLS:], "variables": call.variables.values})


def _arguments(raw: str) -> Any:
    try:
        return json.loads(raw or "{}")
    except json.JSONDecodeError:
        return raw


class CallStatus:
    """Keeps the agent participant's `voice_worker.*` attributes in step with `call`."""

    def __init__(self, call: Call, participant: LocalParticipant) -> None:
        self._call = call
        self._participant = participant
        self._published: dict[str, str] = {}
        # One update at a time, each computed inside the lock: a slow update can never overwrite a newer one.
        self._lock = asyncio.Lock()

    def start(self) -> None:
        self._call.session.on("conversation_item_added", self._on_item)
        # a tool's run changes the simulation attribute before (or without) the next message
        self._call.session.on("function_tools_executed", self._on_item)
        self._schedule()

    def _on_item(self, _event: object) -> None:
        if not self._call.closed:
            self._schedule()

    def _schedule(self) -> None:
        self._call.spawn(self.update(), "status")

    def current(self) -> dict[str, str]:
        wanted = {CALL: call_attribute(self._call)}
        for key, value in (
            (PROCEDURE, procedure_attribute(self._call)),
            (TURNS, turns_attribute(self._call)),
            (SIMULATION, simulation_attribute(self._call)),
        ):
            if value is not None:
                wanted[key] = value
        return wanted

    async def update(self) -> None:
        async with self._lock:
            changed = {k: v for k, v in self.current().items() if self._published.get(k) != v}
            if not changed:
                return
            try:
                await self._participant.set_attributes(changed)
            except Exception as exc:  # the room went away (caller hung up): the call itself is unaffected
                log.debug("call status not published (%s)", type(exc).__name__)
                return
            self._published.update(changed)


def publish_call_status(call: Call, participant: LocalParticipant) -> CallStatus:
    status = CallStatus(call, participant)
    status.start()
    return status
