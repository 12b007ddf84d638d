"""The call simulator (benchmarks/simulator.py) itself: a simulated call says what its script says, its turn
timings are consistent with causality, and a caller who talks over the agent stops the agent's audio.

Nothing here judges latency (that is the benchmarks' business); the timing checks are lower bounds that
only a broken measurement can violate: the first audio cannot come before the VAD has let go of the speech
and every double has taken its fixed latency."""

from __future__ import annotations

import asyncio

import pytest

from benchmarks.simulator import (
    FRAME_S,
    VAD_PERIOD,
    CallerTurn,
    CallRecord,
    CallScript,
    Environment,
    Latencies,
    Tuning,
    default_script,
    run_call,
)
from tests.doubles.wav_fixtures import require_espeak

SCRIPT = default_script(2)
LATENCIES = Latencies()
# the sales agent's pipeline: 500 ms endpointing, so the VAD's minimum silence is 0.5 s; stock Silero's is 0.55 s
WORKER_MIN_SILENCE_MS = 500
STOCK_MIN_SILENCE_MS = 550
# slack of one caller frame between the live VAD and the offline timing of the same audio (both count whole
# frames; a busy machine can only make the live one later)
FRAME_MS = FRAME_S * 1000


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Environment:
    require_espeak()
    return Environment.create(speech_cache=tmp_path_factory.mktemp("speech"))


LONG_REPLY = (
    "Pro is sixty dollars per seat per month, billed monthly, and it includes priority support, "
    "single sign on, audit logs and unlimited projects for the whole team."
)
BARGE_IN = CallScript(
    turns=(
        CallerTurn("I would like to know what the pro plan costs", LONG_REPLY),
        CallerTurn("Sorry to interrupt but what about starter", "Starter is twenty dollars.", barge_in=True),
    ),
    barge_in_after_s=0.8,
)


@pytest.fixture(scope="module")
def calls(env: Environment) -> dict[str, CallRecord]:
    """Side by side: a call through the worker's pipeline, one through stock livekit's, and one where the
    caller talks over the agent (livekit ignores barge-in during its echo-cancellation warm-up, 3 s of
    agent speech, unless that is turned off)."""
    runs = {
        "worker": (SCRIPT, Tuning()),
        "stock": (SCRIPT, Tuning(stock=True)),
        "batch_stt": (SCRIPT, Tuning(stt="batch")),
        "barge_in": (BARGE_IN, Tuning(aec_warmup=False)),
    }

    async def go() -> list[CallRecord]:
        for script, tuning in runs.values():
            await env.aprepare(script, tuning)
        return await asyncio.gather(
            *(run_call(env, script, latencies=LATENCIES, tuning=tuning) for script, tuning in runs.values())
        )

    return dict(zip(runs, asyncio.run(go()), strict=True))


@pytest.mark.parametrize("pipeline", ["worker", "stock", "batch_stt"])
def test_transcript_matches_the_scripted_caller(env: Environment, calls: dict[str, CallRecord], pipeline: str):
    record = calls[pipeline]
    assert record.error is None
    greeting = env.pipeline_for(SCRIPT).first_speaking.text
    expected = [("assistant", greeting)]
    for turn in SCRIPT.turns:
        expected += [("user", turn.says), ("assistant", turn.reply)]
    assert record.transcript == expected


@pytest.mark.parametrize(
    ("pipeline", "min_silence_ms"),
    [("worker", WORKER_MIN_SILENCE_MS), ("stock", STOCK_MIN_SILENCE_MS), ("batch_stt", WORKER_MIN_SILENCE_MS)],
)
def test_turn_timings_are_consistent(calls: dict[str, CallRecord], pipeline: str, min_silence_ms: int):
    record = calls[pipeline]
    assert record.greeting_first_frame_at is not None and record.greeting_first_frame_at > record.entered_at
    assert len(record.turns) == len(SCRIPT.turns)
    stt_ms, tts_ms = LATENCIES.stt_s * 1000, LATENCIES.tts_ttfb_s * 1000
    llm_tts_ms = LATENCIES.llm_ttft_s * 1000 + tts_ms
    for turn in record.turns:
        assert turn.answered and turn.first_audio_at is not None
        assert turn.first_audio_at > turn.speech_ended_at
        assert 0 <= turn.vad_phase < VAD_PERIOD
        # what the VAD must wait for this audio, at least its minimum silence...
        assert turn.endpointing_ms is not None and turn.endpointing_ms >= min_silence_ms
        # ...is what the live VAD did wait (it can only be later, when the machine is busy): exactly, from a
        # replay of the call's own VAD stream, for the worker's per-call VAD; within a frame from the offline
        # table for stock livekit's one shared VAD
        assert turn.endpointing_exact == (pipeline != "stock")
        slack_ms = 2 if turn.endpointing_exact else FRAME_MS
        assert turn.vad_detected_ms is not None and turn.vad_detected_ms >= turn.endpointing_ms - slack_ms
        # every double took at least its latency
        assert turn.stt_ms is not None and turn.stt_ms >= LATENCIES.stt_s * 1000 - 1
        assert turn.llm_ttft_ms is not None and turn.llm_ttft_ms >= LATENCIES.llm_ttft_s * 1000 - 1
        assert turn.tts_ttfb_ms is not None and turn.tts_ttfb_ms >= LATENCIES.tts_ttfb_s * 1000 - 1
        assert turn.preemptive_generation
        if pipeline == "batch_stt":
            # a batch STT is asked once the VAD has let go: its latency and the LLM's follow the wait
            assert turn.total_ms is not None and turn.total_ms >= turn.vad_detected_ms + stt_ms + llm_tts_ms - 1
            assert turn.provider_ms == pytest.approx(stt_ms + llm_tts_ms)
        else:
            # a streaming STT's final comes `stt_s` after the end of speech and the LLM starts on it (preemptive
            # generation); the TTS waits for the end of the turn
            assert turn.total_ms is not None and turn.total_ms >= turn.vad_detected_ms + tts_ms - 1
            assert turn.total_ms >= stt_ms + llm_tts_ms - 1
            expected = max(turn.endpointing_ms, stt_ms + LATENCIES.llm_ttft_s * 1000) + tts_ms - turn.endpointing_ms
            assert turn.provider_ms == pytest.approx(expected)
        # and the split adds up
        assert turn.overhead_ms == pytest.approx(turn.total_ms - turn.endpointing_ms - turn.provider_ms)
    # turn 1 ran the procedure router on the call's LLM (the sales agent has an auto procedure)
    assert record.turns[0].router_ms is not None and record.turns[0].router_ms >= LATENCIES.router_s * 1000 - 1
    assert all(t.router_ms is None for t in record.turns[1:])


def test_barge_in_stops_the_agent_audio(calls: dict[str, CallRecord]):
    record = calls["barge_in"]
    assert record.error is None
    interrupted_turn = record.turns[1]
    assert interrupted_turn.interrupted_reply
    reply = record.segments[1]  # segment 0 is the greeting
    assert reply["interrupted"]
    full_length_s = len(LONG_REPLY) * 0.06  # StreamingFakeTTS speaks 60 ms per character
    assert reply["played_s"] < full_length_s / 2
    # the agent stopped talking before it answered the caller who cut in
    assert interrupted_turn.first_audio_at is not None and reply["finished_at"] <= interrupted_turn.first_audio_at
    assert record.transcript[-2:] == [("user", BARGE_IN.turns[1].says), ("assistant", BARGE_IN.turns[1].reply)]


def test_the_streaming_stt_double_also_answers_a_one_shot_request(env: Environment):
    from benchmarks.simulator import StreamingFakeSTT
    from tests.doubles.audio_io import ScriptedAudioInput

    said = SCRIPT.turns[0].says
    caller = ScriptedAudioInput([env.clip(said)], speed=50.0)
    double = StreamingFakeSTT(caller, latency_s=0.01)

    async def go() -> str:
        await caller.__anext__()  # the first frame carries the first words
        event = await double.recognize(buffer=[])
        return event.alternatives[0].text

    assert asyncio.run(go()) == said
    assert double.requests[0].transcript == said and double.requests[0].responded_at is not None
