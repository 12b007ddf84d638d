"""Interruption phrases, backoff and the final-transcript grace, through a real roomless AgentSession with audio:
the caller's speech (espeak) goes through livekit's Silero VAD and a scripted STT while the agent's speech plays
on a capturing loudspeaker. Each behaviour is shown against the same session without the field."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from livekit.agents import Agent, AgentSession
from livekit.agents.voice.events import UserStateChangedEvent

from catalog.pipeline_config import VoicePipelineConfig
from pipelines.interruptions import attach_phrase_interruptions, matching_phrase, session_options
from pipelines.turn_handling import turn_handling_options
from pipelines.vad import SharedVAD
from tests.doubles.audio_io import CapturingAudioOutput, PlayoutSegment, ScriptedAudioInput
from tests.doubles.fake_llm import FakeLLM
from tests.doubles.fake_speech import FakeSTT, FakeTTS
from tests.doubles.wav_fixtures import Clip, require_espeak, synthesize_speech

WAIT_S = 20.0
# about 24 s of agent speech at 0.25 s per character: the caller always talks over it, however busy the machine
LONG = "Let me read you the whole of our returns policy, which covers every item we sell in our stores."


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory):
    require_espeak()
    cache = Path(tmp_path_factory.mktemp("speech"))

    def say(text: str) -> Clip:
        return synthesize_speech(text, cache_dir=cache)

    return say


class PauseRecordingOutput(CapturingAudioOutput):
    """The loudspeaker, with when livekit paused and resumed it (a VAD interruption it may call false)."""

    def __init__(self) -> None:
        super().__init__()
        self.paused_at: list[float] = []
        self.resumed_at: list[float] = []

    def pause(self) -> None:
        self.paused_at.append(time.time())
        super().pause()

    def resume(self) -> None:
        self.resumed_at.append(time.time())
        super().resume()


@dataclass
class Call:
    session: AgentSession[None]
    caller: ScriptedAudioInput
    speaker: PauseRecordingOutput
    stt: FakeSTT
    # when the VAD said the caller stopped speaking (user state back to listening)
    stopped_speaking_at: list[float]


@pytest.fixture
async def call() -> AsyncIterator[Any]:
    started: list[tuple[Call, Any]] = []

    async def start(config: VoicePipelineConfig, transcripts: list[str], replies: list[str] | None = None) -> Call:
        stt = FakeSTT(transcripts, latency_s=0.1)
        session: AgentSession[None] = AgentSession(
            vad=SharedVAD.load().for_pipeline(config),
            stt=stt,
            llm=FakeLLM(replies or ["Sure, go ahead."]),
            tts=FakeTTS(ttfb_s=0.05, seconds_per_char=0.25, realtime_factor=None),
            turn_handling=turn_handling_options(config),
            # livekit's 3 s echo guard at the first agent speech; there is no echo here
            aec_warmup_duration=None,
            session_close_transcript_timeout=0.1,
            **session_options(config),
        )
        caller, speaker = ScriptedAudioInput([0.2]), PauseRecordingOutput()
        session.input.audio, session.output.audio = caller, speaker
        detach = attach_phrase_interruptions(session, config)
        stopped: list[float] = []

        def on_user_state(ev: UserStateChangedEvent) -> None:
            if ev.old_state == "speaking":
                stopped.append(time.time())

        session.on("user_state_changed", on_user_state)
        await session.start(Agent(instructions="Be brief."))
        result = Call(session, caller, speaker, stt, stopped)
        started.append((result, detach))
        return result

    yield start
    for c, detach in started:
        if detach is not None:
            detach()
        c.caller.close()
        await c.session.aclose()
        await c.speaker.aclose()


async def talk_over_the_agent(c: Call, clip: Clip) -> PlayoutSegment:
    """The agent starts its long speech; 1 s in, the caller says `clip`."""
    c.session.say(LONG)
    segment = await c.speaker.wait_for_segment(0, timeout=WAIT_S)
    await asyncio.sleep(1.0)
    c.caller.enqueue(clip, 0.3)
    await c.caller.wait_for_speech_end(0, timeout=WAIT_S)
    return segment


async def wait_until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


def config(**fields: Any) -> VoicePipelineConfig:
    base: dict[str, Any] = {
        "turn_detection": "vad",
        "endpointing_min_delay_ms": 500,
        "local_vad_params": {"confidence": 0.5, "start_secs": 0.1, "stop_secs": 0.5},
    }
    return VoicePipelineConfig.model_validate({**base, **fields})


def test_phrases_match_whole_words_whatever_the_case_and_punctuation() -> None:
    assert matching_phrase("Hold on, please!", ["hold on"]) == "hold on"
    assert matching_phrase("HOLD   ON", ["Hold on"]) == "Hold on"
    assert matching_phrase("household on", ["hold on"]) is None
    assert matching_phrase("stopping now", ["stop"]) is None
    assert matching_phrase("please stop.", ["stop"]) == "stop"


# a short word below both gates: 3 words and 3 s of speech before livekit would interrupt
GATED = {"interruption_min_words": 3, "interruption_min_duration_ms": 3000}


async def test_a_hard_phrase_stops_the_agent_below_min_words_and_duration(call: Any, speech: Any) -> None:
    c = await call(config(**GATED, interruption_hard_phrases=["stop"]), ["stop"])
    segment = await talk_over_the_agent(c, speech("stop"))
    assert await wait_until(lambda: segment.finished_at is not None, 5.0)
    assert segment.interrupted
    # at once: as soon as the transcript arrived, not after the endpointing delay
    heard_at = c.stt.requests[0].responded_at
    assert heard_at is not None and segment.finished_at is not None
    assert segment.finished_at - heard_at < 0.3, segment.finished_at - heard_at


async def test_without_the_hard_phrase_the_same_word_does_not_interrupt(call: Any, speech: Any) -> None:
    c = await call(config(**GATED), ["stop"])
    segment = await talk_over_the_agent(c, speech("stop"))
    assert await wait_until(lambda: c.stt.requests and c.stt.requests[0].responded_at is not None, 5.0)
    await asyncio.sleep(1.0)
    assert segment.finished_at is None  # still speaking


async def test_with_trigger_phrases_only_they_interrupt(call: Any, speech: Any) -> None:
    c = await call(
        config(interruption_min_duration_ms=300, interruption_trigger_phrases=["hold on"]),
        ["yes I see what you mean", "hold on a second"],
    )
    segment = await talk_over_the_agent(c, speech("yes I see what you mean"))
    assert await wait_until(lambda: c.stt.requests and c.stt.requests[0].responded_at is not None, 5.0)
    await asyncio.sleep(1.0)
    assert segment.finished_at is None and not c.speaker.paused_at  # other speech neither cut nor paused it

    c.caller.enqueue(speech("hold on a second"), 0.3)
    assert await wait_until(lambda: segment.finished_at is not None, 8.0)
    assert segment.interrupted
    assert [r.transcript for r in c.stt.requests] == ["yes I see what you mean", "hold on a second"]


async def test_without_trigger_phrases_any_speech_interrupts(call: Any, speech: Any) -> None:
    c = await call(config(interruption_min_duration_ms=300), ["yes I see what you mean"])
    segment = await talk_over_the_agent(c, speech("yes I see what you mean"))
    assert await wait_until(lambda: segment.finished_at is not None, 8.0)
    assert segment.interrupted


async def _gap_after_barge_in(call: Any, speech: Any, backoff_ms: int) -> float:
    c = await call(config(interruption_min_duration_ms=300, interruption_backoff_ms=backoff_ms), ["wait a moment"])
    cut = await talk_over_the_agent(c, speech("wait a moment"))
    assert await wait_until(lambda: cut.finished_at is not None, 8.0) and cut.interrupted
    reply = await c.speaker.wait_for_segment(1, timeout=WAIT_S)
    assert cut.finished_at is not None
    return reply.first_frame_at - cut.finished_at


async def test_backoff_holds_the_next_reply_after_a_barge_in(call: Any, speech: Any) -> None:
    without = await _gap_after_barge_in(call, speech, 0)
    held = await _gap_after_barge_in(call, speech, 2500)
    print(f"next reply {without:.2f} s after the barge-in without backoff, {held:.2f} s with 2.5 s")
    assert held >= 2.5, held
    assert without < 2.5, without  # the reply would have come sooner: the backoff held it


async def _resume_delay(call: Any, speech: Any, grace_ms: int) -> float:
    """An utterance with no words (a cough, a backchannel the STT drops) pauses the agent; how long after the
    VAD's end of speech (where livekit starts waiting for a transcript) does the agent resume?"""
    c = await call(config(interruption_min_duration_ms=300, interruption_final_transcript_grace_ms=grace_ms), [""])
    segment = await talk_over_the_agent(c, speech("mm hmm yeah"))
    speaker = c.speaker

    def resumed() -> float | None:
        return next((t for t in speaker.resumed_at if speaker.paused_at and t > speaker.paused_at[0]), None)

    assert await wait_until(lambda: resumed() is not None, 8.0), "the agent never resumed"
    assert segment.finished_at is None and not segment.interrupted
    resumed_at = resumed()
    assert resumed_at is not None and c.stopped_speaking_at
    return resumed_at - c.stopped_speaking_at[0]


async def test_final_transcript_grace_sets_when_a_false_interruption_resumes(call: Any, speech: Any) -> None:
    short = await _resume_delay(call, speech, 200)
    long = await _resume_delay(call, speech, 1800)
    print(f"false interruption resumed {short:.2f} s (grace 0.2 s) / {long:.2f} s (grace 1.8 s) after the VAD's end")
    assert 0.2 <= short < 0.2 + 0.5, short
    assert 1.8 <= long < 1.8 + 0.5, long
