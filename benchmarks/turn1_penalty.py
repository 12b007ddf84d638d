"""What the turn-1 procedure choice costs the caller: end of speech -> first agent audio, turn 1 vs turn 2.

Each call is a real, roomless audio AgentSession: the caller's speech (espeak-ng) is fed in real time as
10 ms frames through the real Silero VAD; a batch STT double answers 100 ms after the VAD's end of speech;
the reply model's first token comes 300 ms after the request (then a token every 20 ms); the router answers
250 ms after its request; the TTS's first audio comes 100 ms after its request; endpointing is 500 ms with
preemptive generation on (the pipeline config's defaults, through pipelines/turn_handling.py and
pipelines/vad.py). Turn 1 ("I want my money back for the blender") is routed to the support agent's
refund procedure; turn 2 runs under it.

Designs compared (same doubles, same audio):
- speculative: procedures/supervisor.py as shipped (reply streams per candidate, concurrent with the router)
- sequential: the same supervisor with speculation off (max_speculation=0): the reply waits for the router
- on_user_turn_completed: router awaited in that hook, then `update_instructions` (the obvious livekit
  design: it invalidates the preemptive reply)
- no_router: no procedures at all, the harness's own turn-1 vs turn-2 difference

Usage: `python -m benchmarks.turn1_penalty [--calls N] [--short]`. Prints a markdown table and writes
benchmarks/results/turn1_penalty.json. Needs espeak-ng.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from livekit.agents import Agent, AgentSession, llm
from livekit.agents.voice.generation import update_instructions

from catalog.loader import load_catalog
from catalog.models import Revision
from catalog.pipeline_config import VoicePipelineConfig
from catalog.variables import CallVariables
from contract.settings import EXAMPLE_CATALOG
from pipelines.turn_handling import turn_handling_options
from pipelines.vad import SharedVAD
from procedures.agent import CallAgent
from procedures.supervisor import ProcedureSelector, Supervision, Supervisor
from tests.doubles.audio_io import CapturingAudioOutput, ScriptedAudioInput
from tests.doubles.fake_llm import FakeLLM, Reply
from tests.doubles.fake_speech import FakeSTT, FakeTTS
from tests.doubles.wav_fixtures import require_espeak, synthesize_speech

ROUTER_S = 0.250
LLM_TTFT_S = 0.300
LLM_TOKEN_S = 0.020
TTS_TTFB_S = 0.100
STT_S = 0.100
ENDPOINTING_MS = 500

TURN1 = "I want my money back for the blender"
TURN2 = "The order number is one two three four"
SUPPORT = uuid.UUID("5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01")
REFUND_REPLY = "Sure, what is the order number?"
DEFAULT_REPLY = "Sure, what is the issue today?"  # as many words as REFUND_REPLY: the same time to a sentence
RESULTS = Path(__file__).resolve().parent / "results" / "turn1_penalty.json"
CACHE = Path(tempfile.gettempdir()) / "voice-worker-speech-cache"
DESIGNS = ("speculative", "sequential", "on_user_turn_completed", "no_router")
WAIT_S = 30.0
LEAD_IN_S = 0.3
PAUSE_S = 4.0  # longer than the turn-1 reply takes to play out
VAD_PHASE_PERIOD_S = 0.16  # lcm of the 10 ms input frames and Silero's 512-sample (32 ms) windows at 16 kHz


@dataclass
class CallResult:
    design: str
    turn1_ms: float
    turn2_ms: float
    reply_requests_turn1: int
    router_requests: int
    turn1_reply: str

    @property
    def penalty_ms(self) -> float:
        return self.turn1_ms - self.turn2_ms


@dataclass
class DesignSummary:
    design: str
    calls: int
    turn1_p50_ms: float
    turn2_p50_ms: float
    penalty_p50_ms: float
    penalty_max_ms: float
    results: list[dict[str, Any]] = field(default_factory=list)


def _router() -> FakeLLM:
    return FakeLLM(lambda ctx, tools: Reply(tool_calls=[(tools[0].id, {"name": "refund_request"})], ttft_s=ROUTER_S))


def _reply_llm() -> FakeLLM:
    def script(chat_ctx: llm.ChatContext, tools: list[llm.Tool]) -> Reply:
        system = "\n".join(m.text_content or "" for m in chat_ctx.messages() if m.role == "system")
        return Reply(text=REFUND_REPLY if "Handle a refund" in system else DEFAULT_REPLY)

    return FakeLLM(script, default_ttft_s=LLM_TTFT_S, default_token_interval_s=LLM_TOKEN_S)


class HookRoutedAgent(CallAgent):
    """The obvious design: route in on_user_turn_completed and answer turn 1 under the chosen procedure.

    The hook's `turn_ctx` is what turn 1 is generated from, so the procedure goes there (changing only the
    agent's instructions would leave turn 1 answered under the revision's prompt); that change is what makes
    livekit discard the preemptive reply and generate again after the router."""

    def __init__(self, *, selector: ProcedureSelector, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._selector = selector
        self._routed = False

    async def on_user_turn_completed(self, turn_ctx: llm.ChatContext, new_message: llm.ChatMessage) -> None:
        if self._routed:
            return
        self._routed = True
        decision = await self._selector.decide(new_message.text_content or "")
        if decision.procedure is not None:
            instructions = self.instructions_for(decision.procedure)
            update_instructions(turn_ctx, instructions=instructions, add_if_missing=True)
            await self.update_instructions(instructions)


def _agent(design: str, revision: Revision, router: FakeLLM) -> tuple[Agent, Supervision]:
    variables = CallVariables.bootstrap(
        revision.context_variables, defaults=revision.variable_defaults, seeds=None, system={}
    )
    supervision = Supervision()
    kwargs: dict[str, Any] = {"revision": revision, "variables": variables, "on_end": lambda _: None}
    if design in ("speculative", "sequential"):
        supervisor = Supervisor.for_revision(
            revision, router_model=router, record=supervision, max_speculation=4 if design == "speculative" else 0
        )
        return CallAgent(supervisor=supervisor, **kwargs), supervision
    if design == "on_user_turn_completed":
        return HookRoutedAgent(selector=ProcedureSelector(revision, router), **kwargs), supervision
    plain = revision.model_copy(update={"procedures": ()})
    return CallAgent(**{**kwargs, "revision": plain}), supervision


async def _wait(predicate: Callable[[], bool], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark call did not progress")
        await asyncio.sleep(0.01)


def _pause_between(clip: Any) -> float:
    """At least PAUSE_S, and long enough that turn 2 starts at the same phase of the VAD's 32 ms windows
    (and of the 10 ms frames) as turn 1: otherwise turn 2's end of speech is detected up to a window
    earlier or later than turn 1's, a ±30 ms difference that has nothing to do with the design."""
    rate = clip.sample_rate
    padded = -(-len(clip.pcm) // (rate // 100)) * (rate // 100)  # the input pads clips to whole frames
    period = VAD_PHASE_PERIOD_S * rate
    samples = round(PAUSE_S * rate)
    samples += int(-(padded + samples) % period)
    return samples / rate


def pipeline_config(**changes: Any) -> VoicePipelineConfig:
    """The benchmark's pipeline: 500 ms endpointing, VAD turn detection, preemptive generation (defaults)."""
    fields: dict[str, Any] = {
        "endpointing_min_delay_ms": ENDPOINTING_MS,
        "turn_detection": "vad",
        "first_speaking": {"first_speaker": "user"},
    }
    return VoicePipelineConfig(**{**fields, **changes})


async def run_call(
    design: str,
    revision: Revision,
    vad: SharedVAD,
    clips: tuple[Any, Any],
    config: VoicePipelineConfig | None = None,
) -> CallResult:
    config = config or pipeline_config()
    router, reply = _router(), _reply_llm()
    stt = FakeSTT([TURN1, TURN2], latency_s=STT_S)
    tts = FakeTTS(ttfb_s=TTS_TTFB_S)
    agent, _ = _agent(design, revision, router)
    session = AgentSession(
        stt=stt, llm=reply, tts=tts, vad=vad.for_pipeline(config), turn_handling=turn_handling_options(config)
    )
    caller = ScriptedAudioInput([LEAD_IN_S, clips[0], _pause_between(clips[0]), clips[1]])
    speaker = CapturingAudioOutput()
    session.input.audio = caller
    session.output.audio = speaker
    async with session:
        await session.start(agent)
        await caller.wait_for_speech_end(1, timeout=WAIT_S)
        await _wait(lambda: len(speaker.segments) >= 2)
        ends = caller.speech_ended_at
        first = speaker.segments[0]
        if first.interrupted or first.finished_at is None or first.finished_at > (caller.speech[1].started_at or 0):
            raise RuntimeError("turn 2 began before the turn-1 reply finished playing; lengthen the pause")
        turn1 = (first.first_frame_at - ends[0]) * 1000
        turn2 = (speaker.segments[1].first_frame_at - ends[1]) * 1000
        caller.close()
        turn1_reply = next(m.text_content or "" for m in session.history.messages() if m.role == "assistant")
    return CallResult(
        design=design,
        turn1_ms=turn1,
        turn2_ms=turn2,
        reply_requests_turn1=sum(1 for c in reply.calls if c.last_user_text == TURN1),
        router_requests=len(router.calls),
        turn1_reply=turn1_reply,
    )


def summarize(design: str, results: list[CallResult]) -> DesignSummary:
    return DesignSummary(
        design=design,
        calls=len(results),
        turn1_p50_ms=statistics.median(r.turn1_ms for r in results),
        turn2_p50_ms=statistics.median(r.turn2_ms for r in results),
        penalty_p50_ms=statistics.median(r.penalty_ms for r in results),
        penalty_max_ms=max(r.penalty_ms for r in results),
        results=[{**asdict(r), "penalty_ms": r.penalty_ms} for r in results],
    )


def answered(summary: DesignSummary) -> str:
    """Under which instructions turn 1 was answered, from the reply text the reply double chose."""
    texts = {r["turn1_reply"] for r in summary.results}
    labels = {REFUND_REPLY: "refund procedure", DEFAULT_REPLY: "revision prompt"}
    return " / ".join(sorted(labels.get(t, repr(t)) for t in texts))


def markdown(summaries: list[DesignSummary]) -> str:
    lines = [
        (
            "| design | calls | turn 1 p50 | turn 2 p50 | turn 1 - turn 2 p50 (max) "
            "| reply requests, turn 1 | turn 1 answered under |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        requests = sorted({r["reply_requests_turn1"] for r in s.results})
        lines.append(
            f"| {s.design} | {s.calls} | {s.turn1_p50_ms:.0f} ms | {s.turn2_p50_ms:.0f} ms "
            f"| {s.penalty_p50_ms:+.0f} ms ({s.penalty_max_ms:+.0f}) | {'/'.join(map(str, requests))} "
            f"| {answered(s)} |"
        )
    return "\n".join(lines)


async def main(
    calls: int, designs: tuple[str, ...] = DESIGNS, results_path: Path | None = RESULTS
) -> list[DesignSummary]:
    require_espeak()
    revision = load_catalog(EXAMPLE_CATALOG).agents[SUPPORT].active_revision
    vad = SharedVAD.load()
    # The same audio for both turns (only the STT double's transcript differs): two different clips end
    # differently, and the VAD's end-of-speech timing would differ by tens of milliseconds between them.
    clip = synthesize_speech(TURN1, cache_dir=CACHE)
    clips = (clip, clip)
    summaries = []
    for design in designs:
        results = [await run_call(design, revision, vad, clips) for _ in range(calls)]
        summaries.append(summarize(design, results))
    if results_path is not None:
        results_path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "doubles": {
                "router_ms": ROUTER_S * 1000,
                "llm_ttft_ms": LLM_TTFT_S * 1000,
                "tts_ttfb_ms": TTS_TTFB_S * 1000,
                "stt_ms": STT_S * 1000,
                "endpointing_ms": ENDPOINTING_MS,
            },
            "goal": "speculative turn 1 <= turn 2 + 20 ms",
            "designs": [asdict(s) for s in summaries],
        }
        results_path.write_text(json.dumps(payload, indent=2))
    return summaries


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5, help="calls per design (default 5)")
    parser.add_argument("--short", action="store_true", help="one call per design (CI)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    summaries = asyncio.run(main(1 if args.short else args.calls))
    print(markdown(summaries))
    print(f"\nresults: {RESULTS}")


if __name__ == "__main__":
    cli()
