"""The session doubles drive a real, roomless AgentSession: text turns, tool calls, fallbacks,
and a voice turn with the real Silero VAD (speech in, end of turn, agent audio out)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import Agent, AgentSession, RunContext, function_tool, llm
from livekit.agents._exceptions import APIConnectionError, APIStatusError
from livekit.agents.types import APIConnectOptions
from livekit.agents.vad import VAD
from livekit.agents.voice.events import ConversationItemAddedEvent
from livekit.agents.voice.io import PlaybackFinishedEvent, PlaybackStartedEvent
from livekit.agents.voice.run_result import RunResult
from livekit.plugins import silero

from tests.doubles.audio_io import CapturingAudioOutput, ScriptedAudioInput
from tests.doubles.fake_llm import FakeLLM, Reply
from tests.doubles.fake_speech import FakeSTT, FakeTTS
from tests.doubles.wav_fixtures import (
    Clip,
    compose,
    require_espeak,
    speech_pause_speech,
    synthesize_speech,
)

WAIT_S = 15.0  # generous: only guards against a hang, never measures latency


@pytest.fixture(scope="module")
def speech_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("speech-cache")


@pytest.fixture(scope="module")
def vad() -> VAD:
    return silero.VAD.load()


class OrderAgent(Agent):
    def __init__(self) -> None:
        super().__init__(instructions="You help callers track orders.")
        self.looked_up: list[str] = []

    @function_tool
    async def lookup_order(self, ctx: RunContext, order_id: str) -> str:
        """Look up the shipping status of an order."""
        self.looked_up.append(order_id)
        return f"order {order_id} shipped yesterday"


def _tone_clip(seconds: float, sample_rate: int) -> Clip:
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    pcm = (8000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)
    return Clip(pcm=pcm, sample_rate=sample_rate, speech_spans=((0.0, seconds),), texts=("tone",))


async def test_text_conversation_with_tool_call() -> None:
    fake = FakeLLM(
        [
            "Hi, I can help with orders.",
            Reply(tool_calls=[("lookup_order", {"order_id": "42"})]),
            Reply(text="Your order shipped yesterday.", ttft_s=0.05, token_interval_s=0.01),
        ]
    )
    agent = OrderAgent()
    async with AgentSession(llm=fake) as session:
        await session.start(agent)

        result: RunResult[None] = await session.run(user_input="hi")
        greeting = result.expect.next_event().is_message(role="assistant").event().item
        result.expect.no_more_events()
        assert greeting.text_content == "Hi, I can help with orders."

        result = await session.run(user_input="where is order 42?")
        result.expect.next_event().is_function_call(name="lookup_order", arguments={"order_id": "42"})
        result.expect.next_event().is_function_call_output()
        answer = result.expect.next_event().is_message(role="assistant").event().item
        result.expect.no_more_events()
        assert answer.text_content == "Your order shipped yesterday."

        # the script is spent, so the default echo answers
        result = await session.run(user_input="thanks")
        echo = result.expect.next_event().is_message(role="assistant").event().item
        assert echo.text_content == "You said: thanks"

    assert agent.looked_up == ["42"]
    assert [c.last_user_text for c in fake.calls] == [
        "hi",
        "where is order 42?",
        "where is order 42?",
        "thanks",
    ]
    assert all(c.instructions == "You help callers track orders." for c in fake.calls)
    assert all(c.tool_names == ("lookup_order",) for c in fake.calls)
    assert fake.calls[0].messages[0].role == "system"
    assert fake.calls[2].tool_outputs == (("lookup_order", "order 42 shipped yesterday"),)
    assert fake.calls[3].messages[-2].text == "Your order shipped yesterday."
    paced = fake.calls[2]
    assert paced.first_chunk_at is not None and paced.finished_at is not None
    assert paced.first_chunk_at - paced.started_at >= 0.04
    print(f"paced reply: ttft={paced.first_chunk_at - paced.started_at:.3f}s")


async def test_llm_error_falls_back_to_next_provider() -> None:
    broken = FakeLLM(lambda ctx, tools: Reply(error=APIStatusError("overloaded", status_code=503)))
    healthy = FakeLLM(["Backup here."])
    fallback = llm.FallbackAdapter([broken, healthy], max_retry_per_llm=0)
    async with AgentSession(llm=fallback) as session:
        await session.start(Agent(instructions="Be brief."))
        result: RunResult[None] = await session.run(user_input="hello?")
        reply = result.expect.next_event().is_message(role="assistant").event().item
        assert reply.text_content == "Backup here."

    assert broken.calls and isinstance(broken.calls[0].error, APIStatusError)
    assert healthy.calls[0].last_user_text == "hello?"


async def test_llm_retries_consume_the_script() -> None:
    fake = FakeLLM([Reply(error=APIConnectionError()), "Second attempt."])
    async with AgentSession(llm=fake) as session:
        await session.start(Agent(instructions="Be brief."))
        result: RunResult[None] = await session.run(user_input="hi")
        reply = result.expect.next_event().is_message(role="assistant").event().item
        assert reply.text_content == "Second attempt."
    assert len(fake.calls) == 2 and fake.calls[0].error is not None and fake.remaining == 0


async def test_fake_stt_and_tts_record_latencies() -> None:
    stt = FakeSTT(["order status"], latency_s=0.05)
    frame = rtc.AudioFrame(data=bytes(3200), sample_rate=16000, num_channels=1, samples_per_channel=1600)
    event = await stt.recognize(frame)
    assert event.alternatives[0].text == "order status"
    assert (await stt.recognize(frame)).alternatives[0].text == "Hello."
    req = stt.requests[0]
    assert req.responded_at is not None and req.responded_at - req.requested_at >= 0.04
    assert req.audio_duration == pytest.approx(0.1)

    tts = FakeTTS(ttfb_s=0.05, realtime_factor=None)
    audio = await tts.synthesize("Your order shipped.").collect()
    assert audio.sample_rate == 24000 and audio.num_channels == 1
    treq = tts.requests[0]
    assert treq.first_byte_at is not None and treq.first_byte_at - treq.requested_at >= 0.04
    assert audio.duration == pytest.approx(treq.audio_duration, abs=0.02)

    tts.fail_with = APIConnectionError("tts down")
    with pytest.raises(APIConnectionError):
        await tts.synthesize("again", conn_options=APIConnectOptions(max_retry=0)).collect()
    assert tts.requests[-1].error is not None


async def test_scripted_input_marks_end_of_speech() -> None:
    clip = compose([_tone_clip(0.2, 16000), 0.1, _tone_clip(0.15, 16000)], sample_rate=16000)
    inp = ScriptedAudioInput([0.05, clip], speed=20.0)
    frames: list[rtc.AudioFrame] = []
    ended_after: list[int] = []  # frames delivered when each utterance's end was stamped
    while not inp.idle:
        frames.append(await inp.__anext__())
        ended_after += [len(frames)] * (sum(m.ended_at is not None for m in inp.speech) - len(ended_after))
    extra = await inp.__anext__()  # the open line keeps sending silence

    assert len(frames) == 50 and all(f.samples_per_channel == 160 for f in frames)
    assert not np.frombuffer(extra.data, dtype=np.int16).any()
    # 0.05 s lead-in + 0.2 s tone: the first utterance's last sample is in frame 25;
    # then 0.1 s pause + 0.15 s tone puts the second one's in frame 50
    assert ended_after == [25, 50]
    first, second = inp.speech
    assert first.started_at is not None and first.ended_at is not None
    assert first.started_at <= first.ended_at <= (second.ended_at or 0.0)
    assert [m.text for m in inp.speech] == ["tone", "tone"]
    inp.enqueue(_tone_clip(0.05, 16000))
    assert not inp.idle
    inp.close()
    with pytest.raises(StopAsyncIteration):
        await inp.__anext__()


async def test_capturing_output_playout_and_barge_in() -> None:
    out = CapturingAudioOutput(playback_speed=20.0)
    started: list[PlaybackStartedEvent] = []
    finished: list[PlaybackFinishedEvent] = []
    out.on("playback_started", started.append)
    out.on("playback_finished", finished.append)

    def frame() -> rtc.AudioFrame:
        return rtc.AudioFrame(data=bytes(960), sample_rate=24000, num_channels=1, samples_per_channel=480)

    for _ in range(10):
        await out.capture_frame(frame())
    out.flush()
    done = await asyncio.wait_for(out.wait_for_playout(), WAIT_S)
    assert not done.interrupted and done.playback_position == pytest.approx(0.2)

    for _ in range(100):  # 2 s of audio, 0.1 s at this playback speed
        await out.capture_frame(frame())
    out.flush()
    out.clear_buffer()
    cut = await asyncio.wait_for(out.wait_for_playout(), WAIT_S)
    assert cut.interrupted and cut.playback_position < 2.0

    assert len(started) == 2 and len(finished) == 2
    assert [s.interrupted for s in out.segments] == [False, True]
    assert out.segments[1].pushed_duration == pytest.approx(2.0)
    assert len(out.segments[0].pcm) == 4800


async def test_wav_fixtures_compose_speech_and_pauses(speech_cache: Path) -> None:
    require_espeak()
    clip = speech_pause_speech(
        "My parcel is late.",
        "Can you help?",
        cache_dir=speech_cache,
        pause_s=0.7,
        sample_rate=48000,
    )
    assert clip.sample_rate == 48000 and clip.pcm.dtype == np.int16
    (a_start, a_end), (b_start, b_end) = clip.speech_spans
    assert a_start == 0.0 and b_start - a_end == pytest.approx(0.7, abs=1e-3)
    assert b_end == pytest.approx(clip.duration)
    assert clip.texts == ("My parcel is late.", "Can you help?")
    gap = clip.pcm[round(a_end * 48000) + 10 : round(b_start * 48000) - 10]
    assert not gap.any() and np.abs(clip.pcm).max() > 1000
    again = synthesize_speech("My parcel is late.", cache_dir=speech_cache, sample_rate=48000)
    assert len(list(speech_cache.glob("espeak-*.wav"))) == 2
    assert again.duration == pytest.approx(a_end)


def _voice_session(vad: VAD, stt: FakeSTT, fake_llm: FakeLLM, tts: FakeTTS) -> AgentSession:
    return AgentSession(
        vad=vad,
        stt=stt,
        llm=fake_llm,
        tts=tts,
        turn_handling={"turn_detection": "vad", "endpointing": {"min_delay": 0.5}},
        # the default 3 s echo guard would swallow the barge-in; no echo exists here
        aec_warmup_duration=None,
        # with no pending speech the default close waits 2 s for a transcript that never comes
        session_close_transcript_timeout=0.1,
    )


def _assistant_messages(session: AgentSession) -> asyncio.Queue[llm.ChatMessage]:
    queue: asyncio.Queue[llm.ChatMessage] = asyncio.Queue()

    def on_item(ev: ConversationItemAddedEvent) -> None:
        if isinstance(ev.item, llm.ChatMessage) and ev.item.role == "assistant":
            queue.put_nowait(ev.item)

    session.on("conversation_item_added", on_item)
    return queue


async def test_voice_turn_roomless_session(speech_cache: Path, vad: VAD) -> None:
    require_espeak()
    said = "I would like to check on my order please."
    inp = ScriptedAudioInput([0.3, synthesize_speech(said, cache_dir=speech_cache), 2.0])
    out = CapturingAudioOutput()
    stt = FakeSTT([said], latency_s=0.15)
    tts = FakeTTS(ttfb_s=0.1, seconds_per_char=0.02)
    fake_llm = FakeLLM(default_ttft_s=0.2)
    session = _voice_session(vad, stt, fake_llm, tts)
    session.input.audio = inp
    session.output.audio = out
    replies = _assistant_messages(session)

    await session.start(Agent(instructions="Be brief."))
    try:
        speech = await inp.wait_for_speech_end(0, timeout=WAIT_S)
        first_audio = await out.wait_for_segment(0, timeout=WAIT_S)
        reply = await asyncio.wait_for(replies.get(), WAIT_S)
    finally:
        await session.aclose()

    assert speech.ended_at is not None
    assert speech.ended_at < stt.requests[0].requested_at < fake_llm.calls[0].started_at
    assert speech.ended_at < first_audio.first_frame_at
    assert fake_llm.calls[0].last_user_text == said
    assert reply.text_content == f"You said: {said}"
    assert tts.requests[0].text == reply.text_content
    assert first_audio.frames and first_audio.frames[0].sample_rate == 24000
    history = [(m.role, m.text_content) for m in session.history.messages()]
    assert history == [("user", said), ("assistant", f"You said: {said}")]
    stt_req, llm_call, tts_req = stt.requests[0], fake_llm.calls[0], tts.requests[0]
    print(
        "voice turn (s after end of speech): "
        f"stt request {stt_req.requested_at - speech.ended_at:.3f}, "
        f"llm call {llm_call.started_at - speech.ended_at:.3f}, "
        f"tts request {tts_req.requested_at - speech.ended_at:.3f}, "
        f"first agent audio {first_audio.first_frame_at - speech.ended_at:.3f}"
    )


async def test_barge_in_clears_agent_audio(speech_cache: Path, vad: VAD) -> None:
    require_espeak()
    first = "I would like to check on my order please."
    second = "Wait, I have another question."
    inp = ScriptedAudioInput([0.3, synthesize_speech(first, cache_dir=speech_cache)])
    out = CapturingAudioOutput()
    stt = FakeSTT([first, second], latency_s=0.1)
    # a long reply, so the caller talks over it
    tts = FakeTTS(ttfb_s=0.05, seconds_per_char=0.1)
    fake_llm = FakeLLM(["This is a long answer about your order that goes on and on.", "Sure, go ahead."])
    session = _voice_session(vad, stt, fake_llm, tts)
    session.input.audio = inp
    session.output.audio = out
    replies = _assistant_messages(session)

    await session.start(Agent(instructions="Be brief."))
    try:
        await out.wait_for_segment(0, timeout=WAIT_S)
        inp.enqueue(synthesize_speech(second, cache_dir=speech_cache), 0.5)
        cut = await out.wait_for_playout_of(0, timeout=WAIT_S)
        interrupted_reply = await asyncio.wait_for(replies.get(), WAIT_S)
        next_reply = await asyncio.wait_for(replies.get(), WAIT_S)
    finally:
        await session.aclose()

    assert cut.interrupted and cut.playback_position < cut.pushed_duration
    assert out.clear_count >= 1
    assert interrupted_reply.interrupted
    assert next_reply.text_content == "Sure, go ahead." and not next_reply.interrupted
    assert fake_llm.calls[1].last_user_text == second
    print(f"barge-in: played {cut.playback_position:.2f}s of {cut.pushed_duration:.2f}s")
