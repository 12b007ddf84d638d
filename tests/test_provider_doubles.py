"""The provider doubles speak the wire formats the real livekit plugins expect.

Every test drives a real plugin object (`livekit.plugins.openai` / `deepgram`) against a double on
127.0.0.1, so a drift between the double and the plugin's parser fails here, not in the worker.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
import wave
from collections.abc import AsyncIterator

import aiohttp
import openai as openai_sdk
import pytest
from livekit import rtc
from livekit.agents import (
    APIConnectionError,
    APIConnectOptions,
    APIStatusError,
    APITimeoutError,
    function_tool,
    llm,
)
from livekit.agents import stt as stt_mod
from livekit.plugins import deepgram, openai

from tests.doubles.deepgram_server import (
    LISTEN_PATH,
    DeepgramServerDouble,
)
from tests.doubles.deepgram_server import (
    SPEAK_PATH as DG_SPEAK_PATH,
)
from tests.doubles.openai_server import (
    CHAT_PATH,
    SPEECH_PATH,
    TRANSCRIPTION_PATH,
    OpenAIServerDouble,
    Reply,
    SpeechReply,
    ToolCall,
    TranscriptionReply,
    tone,
)

NO_RETRY = APIConnectOptions(max_retry=0, retry_interval=0.0, timeout=5.0)


@pytest.fixture
async def oai() -> AsyncIterator[OpenAIServerDouble]:
    async with OpenAIServerDouble() as double:
        yield double


def _user_ctx(text: str) -> llm.ChatContext:
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="system", content="You are the support agent.")
    ctx.add_message(role="user", content=text)
    return ctx


async def _collect(
    model: llm.LLM,
    ctx: llm.ChatContext,
    *,
    tools: list[llm.Tool] | None = None,
    conn_options: APIConnectOptions = NO_RETRY,
) -> tuple[str, list[llm.FunctionToolCall], list[llm.CompletionUsage]]:
    text, calls, usage = "", [], []
    async with model.chat(chat_ctx=ctx, tools=tools, conn_options=conn_options) as stream:
        async for chunk in stream:
            if chunk.delta is not None:
                text += chunk.delta.content or ""
                calls.extend(chunk.delta.tool_calls)
            if chunk.usage is not None:
                usage.append(chunk.usage)
    return text, calls, usage


def _llm(oai: OpenAIServerDouble, model: str = "gpt-4.1-mini") -> openai.LLM:
    return openai.LLM(model=model, base_url=oai.base_url, api_key="test-key-not-real")


# -- chat completions ---------------------------------------------------------------------------


async def test_llm_stream_yields_scripted_text_and_usage(oai: OpenAIServerDouble) -> None:
    oai.script_chat(Reply(text="Your order ships tomorrow, Ada."), model="gpt-4.1-mini")
    model = _llm(oai)
    try:
        text, calls, usage = await _collect(model, _user_ctx("Where is my order?"))
    finally:
        await model.aclose()

    assert text == "Your order ships tomorrow, Ada."
    assert calls == []
    assert len(usage) == 1 and usage[0].completion_tokens == 5
    assert usage[0].total_tokens == usage[0].prompt_tokens + 5

    (req,) = oai.chat_requests
    assert req.model == "gpt-4.1-mini"
    assert req.stream is True
    assert req.body["stream_options"] == {"include_usage": True}
    assert req.last_user_text == "Where is my order?"
    assert req.system_prompt == "You are the support agent."
    assert req.headers["Authorization"] == "<redacted>"
    assert "test-key-not-real" not in json.dumps(req.headers)


async def test_llm_stream_carries_tool_calls_with_fragmented_arguments(
    oai: OpenAIServerDouble,
) -> None:
    @function_tool
    async def lookup_order(order_id: str) -> str:
        """Look up an order by its id."""
        return "shipped"

    args = {"order_id": "A-1042-with-a-long-suffix"}
    oai.script_chat(Reply(text="Let me check.", tool_calls=[ToolCall("lookup_order", args, call_id="call_1")]))
    model = _llm(oai)
    try:
        text, calls, _ = await _collect(model, _user_ctx("Order A-1042?"), tools=[lookup_order])
    finally:
        await model.aclose()

    assert text == "Let me check."
    assert [(c.name, json.loads(c.arguments), c.call_id) for c in calls] == [("lookup_order", args, "call_1")]
    (req,) = oai.chat_requests
    assert req.tool_names == ["lookup_order"]


async def test_llm_two_parallel_tool_calls_both_surface(oai: OpenAIServerDouble) -> None:
    @function_tool
    async def first(x: int) -> str:
        """First tool."""
        return ""

    @function_tool
    async def second(y: str) -> str:
        """Second tool."""
        return ""

    oai.script_chat(Reply(tool_calls=[ToolCall("first", {"x": 1}), ToolCall("second", {"y": "z"})]))
    model = _llm(oai)
    try:
        _, calls, _ = await _collect(model, _user_ctx("go"), tools=[first, second])
    finally:
        await model.aclose()
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("first", {"x": 1}),
        ("second", {"y": "z"}),
    ]


async def test_default_reply_echoes_last_user_message(oai: OpenAIServerDouble) -> None:
    model = _llm(oai)
    try:
        text, _, _ = await _collect(model, _user_ctx("I need a refund"))
    finally:
        await model.aclose()
    assert text == "You said: I need a refund"


async def test_scripts_are_per_model_and_requests_counted(oai: OpenAIServerDouble) -> None:
    oai.script_chat("router says billing", model="router-model")
    oai.set_chat_responder(lambda body: f"agent saw {len(body['messages'])} messages", model="agent-model")
    router, agent = _llm(oai, "router-model"), _llm(oai, "agent-model")
    try:
        assert (await _collect(router, _user_ctx("hi")))[0] == "router says billing"
        # The router queue is now empty: the next router call falls back to the echo default.
        assert (await _collect(router, _user_ctx("again")))[0] == "You said: again"
        assert (await _collect(agent, _user_ctx("hi")))[0] == "agent saw 2 messages"
    finally:
        await router.aclose()
        await agent.aclose()

    assert oai.chat_counts() == {"router-model": 2, "agent-model": 1}
    assert oai.chat_count("agent-model") == 1
    assert [r.last_user_text for r in oai.requests_for(model="router-model")] == ["hi", "again"]


async def test_ttft_delays_first_token(oai: OpenAIServerDouble) -> None:
    oai.script_chat(Reply(text="slow start", ttft_ms=300, token_interval_ms=20))
    model = _llm(oai)
    try:
        started = time.monotonic()
        async with model.chat(chat_ctx=_user_ctx("hi"), conn_options=NO_RETRY) as stream:
            async for chunk in stream:
                if chunk.delta is not None and chunk.delta.content:
                    break
        # A lower bound only: the server cannot have answered before its scripted delay.
        assert time.monotonic() - started >= 0.3
    finally:
        await model.aclose()


async def test_status_500_surfaces_as_api_status_error(oai: OpenAIServerDouble) -> None:
    oai.script_chat(Reply(status=500, error_message="upstream exploded"))
    model = _llm(oai)
    try:
        with pytest.raises(APIStatusError) as info:
            await _collect(model, _user_ctx("hi"))
    finally:
        await model.aclose()
    assert info.value.status_code == 500
    assert "upstream exploded" in info.value.message


async def test_hang_hits_the_plugin_timeout(oai: OpenAIServerDouble) -> None:
    oai.script_chat(Reply(hang=True))
    model = _llm(oai)
    started = time.monotonic()
    try:
        with pytest.raises(APITimeoutError):
            await _collect(model, _user_ctx("hi"), conn_options=APIConnectOptions(max_retry=0, timeout=0.5))
    finally:
        await model.aclose()
    assert time.monotonic() - started < 10  # generous: proves it was the 0.5 s timeout, not a hang


async def test_hang_after_tokens_stalls_mid_stream_until_timeout(oai: OpenAIServerDouble) -> None:
    oai.script_chat(Reply(text="one two three four", hang_after_tokens=2))
    model = _llm(oai)
    seen = ""
    try:
        with pytest.raises(APITimeoutError):
            async with model.chat(
                chat_ctx=_user_ctx("hi"), conn_options=APIConnectOptions(max_retry=0, timeout=0.5)
            ) as stream:
                async for chunk in stream:
                    if chunk.delta is not None:
                        seen += chunk.delta.content or ""
    finally:
        await model.aclose()
    assert seen == "one two"


async def test_disconnect_mid_stream_is_a_connection_error(oai: OpenAIServerDouble) -> None:
    oai.script_chat(Reply(text="one two three four", disconnect_mid_stream=True))
    model = _llm(oai)
    try:
        with pytest.raises(APIConnectionError):
            await _collect(model, _user_ctx("hi"))
    finally:
        await model.aclose()


async def test_non_stream_completion_with_json_schema_returns_scripted_content(
    oai: OpenAIServerDouble,
) -> None:
    decision = {"procedure": "refund", "confidence": 0.9}
    oai.script_chat(json.dumps(decision), model="router-model")
    oai.script_chat(Reply(tool_calls=[ToolCall("route", {"to": "billing"})]), model="router-model")
    client = openai_sdk.AsyncOpenAI(base_url=oai.base_url, api_key="test", max_retries=0)
    try:
        schema = {
            "type": "json_schema",
            "json_schema": {
                "name": "decision",
                "strict": True,
                "schema": {
                    "type": "object",
                    "properties": {
                        "procedure": {"type": "string"},
                        "confidence": {"type": "number"},
                    },
                    "required": ["procedure", "confidence"],
                    "additionalProperties": False,
                },
            },
        }
        first = await client.chat.completions.create(
            model="router-model",
            messages=[{"role": "user", "content": "I want my money back"}],
            response_format=schema,  # type: ignore[arg-type]  # a raw JSON schema dict, not the SDK's typed one
        )
        second = await client.chat.completions.create(
            model="router-model", messages=[{"role": "user", "content": "route me"}]
        )
    finally:
        await client.close()

    assert json.loads(first.choices[0].message.content or "") == decision
    assert first.choices[0].finish_reason == "stop"
    assert first.usage is not None and first.usage.completion_tokens > 0
    call = (second.choices[0].message.tool_calls or [])[0]
    assert (call.function.name, json.loads(call.function.arguments)) == ("route", {"to": "billing"})
    assert second.choices[0].finish_reason == "tool_calls"
    assert oai.chat_requests[0].body["response_format"]["json_schema"]["name"] == "decision"
    assert oai.chat_requests[0].stream is False


# -- speech -------------------------------------------------------------------------------------


async def _synthesize(tts: openai.TTS, text: str) -> list[rtc.AudioFrame]:
    frames = []
    async with tts.synthesize(text, conn_options=NO_RETRY) as stream:
        async for ev in stream:
            frames.append(ev.frame)
    return frames


@pytest.mark.parametrize(
    ("model", "response_format"),
    [
        ("gpt-4o-mini-tts", None),  # the plugin's defaults: mp3 over SSE
        ("gpt-4o-mini-tts", "pcm"),
        ("gpt-4o-mini-tts", "wav"),
        ("tts-1", "pcm"),  # raw audio body rather than SSE
        ("tts-1", "mp3"),
        ("gpt-4o-mini-tts", "opus"),
    ],
)
async def test_tts_synthesize_yields_audio_proportional_to_text(
    oai: OpenAIServerDouble, model: str, response_format: str | None
) -> None:
    kwargs = {} if response_format is None else {"response_format": response_format}
    tts = openai.TTS(model=model, voice="alloy", base_url=oai.base_url, api_key="test", **kwargs)
    text = "Thanks for calling, how can I help?"
    try:
        frames = await _synthesize(tts, text)
    finally:
        await tts.aclose()

    assert frames and all(f.sample_rate == 24_000 and f.num_channels == 1 for f in frames)
    duration = sum(f.duration for f in frames)
    expected = len(text) * oai.speech_seconds_per_char
    # Codec framing and padding change the length a little; the content must still be the tone.
    assert expected * 0.8 <= duration <= expected * 1.2
    assert max(max(abs(s) for s in f.data) for f in frames) > 5_000

    (req,) = oai.requests_for(path=SPEECH_PATH)
    assert req.body["input"] == text and req.body["voice"] == "alloy" and req.model == model
    assert req.body["response_format"] == (response_format or "mp3")


async def test_tts_time_to_first_byte_is_configurable(oai: OpenAIServerDouble) -> None:
    oai.script_speech(SpeechReply(ttfb_ms=300))
    tts = openai.TTS(base_url=oai.base_url, api_key="test", response_format="pcm")
    try:
        started = time.monotonic()
        async with tts.synthesize("hi there", conn_options=NO_RETRY) as stream:
            async for _ in stream:
                break
        assert time.monotonic() - started >= 0.3
    finally:
        await tts.aclose()


async def test_tts_status_500_surfaces_as_api_status_error(oai: OpenAIServerDouble) -> None:
    oai.script_speech(SpeechReply(status=500))
    tts = openai.TTS(base_url=oai.base_url, api_key="test")
    try:
        with pytest.raises(APIStatusError) as info:
            await _synthesize(tts, "hello")
    finally:
        await tts.aclose()
    assert info.value.status_code == 500


# -- transcription ------------------------------------------------------------------------------


def _speech_frame(seconds: float = 0.3, sample_rate: int = 16_000) -> rtc.AudioFrame:
    pcm = tone(seconds, sample_rate=sample_rate)
    return rtc.AudioFrame(data=pcm, sample_rate=sample_rate, num_channels=1, samples_per_channel=len(pcm) // 2)


@pytest.mark.parametrize("model", ["gpt-4o-mini-transcribe", "whisper-1"])
async def test_stt_recognize_returns_scripted_text(oai: OpenAIServerDouble, model: str) -> None:
    oai.script_transcription(TranscriptionReply(text="I want to cancel my plan", latency_ms=50))
    stt = openai.STT(model=model, base_url=oai.base_url, api_key="test")
    try:
        event = await stt.recognize(_speech_frame(), conn_options=NO_RETRY)
    finally:
        await stt.aclose()

    assert event.alternatives[0].text == "I want to cancel my plan"
    (req,) = oai.requests_for(path=TRANSCRIPTION_PATH)
    assert req.model == model
    assert req.body["response_format"] == ("verbose_json" if model == "whisper-1" else "json")
    assert req.file is not None
    with wave.open(io.BytesIO(req.file), "rb") as w:
        assert (w.getframerate(), w.getnframes()) == (16_000, 4_800)


async def test_stt_default_transcript_and_500(oai: OpenAIServerDouble) -> None:
    stt = openai.STT(base_url=oai.base_url, api_key="test")
    try:
        event = await stt.recognize(_speech_frame(), conn_options=NO_RETRY)
        assert event.alternatives[0].text == "hello"

        oai.script_transcription(TranscriptionReply(status=500))
        with pytest.raises(APIStatusError) as info:
            await stt.recognize(_speech_frame(), conn_options=NO_RETRY)
        assert info.value.status_code == 500
    finally:
        await stt.aclose()
    assert len(oai.requests_for(path=TRANSCRIPTION_PATH)) == 2
    assert oai.requests_for(path=CHAT_PATH) == []


# -- deepgram -----------------------------------------------------------------------------------


@pytest.fixture
async def dg() -> AsyncIterator[DeepgramServerDouble]:
    async with DeepgramServerDouble() as double:
        yield double


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _frames(pattern: list[tuple[str, float]], sample_rate: int = 16_000) -> list[rtc.AudioFrame]:
    """10 ms frames of tone ("speech") or zeros ("silence"), as a microphone would deliver them."""
    per_frame = sample_rate // 100
    frames = []
    for kind, seconds in pattern:
        pcm = tone(seconds, sample_rate=sample_rate) if kind == "speech" else bytes(int(seconds * sample_rate) * 2)
        for i in range(0, len(pcm), per_frame * 2):
            chunk = pcm[i : i + per_frame * 2]
            frames.append(rtc.AudioFrame(chunk, sample_rate, 1, len(chunk) // 2))
    return frames


async def _stream_events(
    stt: deepgram.STT, frames: list[rtc.AudioFrame], *, utterances: int
) -> list[stt_mod.SpeechEvent]:
    """Events up to the `utterances`-th END_OF_SPEECH.

    Stops there rather than at the stream's natural end: after CloseStream the plugin's keepalive
    task only notices the closed socket on its next 5 s tick.
    """
    events = []
    stream = stt.stream(conn_options=NO_RETRY)
    for frame in frames:
        stream.push_frame(frame)
    stream.end_input()
    # Generous bound so a double that never endpoints fails the test instead of stalling it.
    async with asyncio.timeout(20), stream:
        async for ev in stream:
            if ev.type != stt_mod.SpeechEventType.RECOGNITION_USAGE:
                events.append(ev)
            if sum(e.type == stt_mod.SpeechEventType.END_OF_SPEECH for e in events) == utterances:
                break
    return events


async def test_deepgram_stream_emits_start_interim_final_end(
    dg: DeepgramServerDouble, http: aiohttp.ClientSession
) -> None:
    dg.script_transcripts("I want a refund.", "Thanks, bye.")
    stt = deepgram.STT(api_key="test-dg-key", base_url=dg.listen_url, http_session=http)
    frames = _frames([("silence", 0.3), ("speech", 0.6), ("silence", 0.3), ("speech", 0.4), ("silence", 0.3)])
    try:
        events = await _stream_events(stt, frames, utterances=2)
    finally:
        await stt.aclose()

    T = stt_mod.SpeechEventType
    assert [(e.type, e.alternatives[0].text if e.alternatives else None) for e in events] == [
        (T.START_OF_SPEECH, None),
        (T.INTERIM_TRANSCRIPT, "I want"),
        (T.FINAL_TRANSCRIPT, "I want a refund."),
        (T.END_OF_SPEECH, None),
        (T.START_OF_SPEECH, None),
        (T.INTERIM_TRANSCRIPT, "Thanks,"),
        (T.FINAL_TRANSCRIPT, "Thanks, bye."),
        (T.END_OF_SPEECH, None),
    ]
    final = events[2].alternatives[0]
    # Word timings follow the audio: the first utterance's tone spans 0.3 s to 0.9 s.
    assert final.start_time == pytest.approx(0.3, abs=0.02)
    assert final.end_time == pytest.approx(0.9, abs=0.02)

    (session,) = dg.listen_sessions
    assert session.query["model"] == "nova-3" and session.query["encoding"] == "linear16"
    assert session.query["sample_rate"] == "16000" and session.query["endpointing"] == "25"
    # All audio up to the second endpoint (1.6 s plus 25 ms of silence) must have arrived.
    assert session.audio_bytes >= int((1.6 + 0.025) * 16_000) * 2
    (req,) = dg.requests_for("listen_ws")
    assert req.headers["Authorization"] == "<redacted>"


async def test_deepgram_utterance_end_without_endpointing(
    dg: DeepgramServerDouble, http: aiohttp.ClientSession
) -> None:
    dg.script_transcripts("Hold on please.")
    stt = deepgram.STT(
        api_key="test",
        base_url=dg.listen_url,
        http_session=http,
        endpointing_ms=0,
        utterance_end_ms=1000,
    )
    try:
        events = await _stream_events(stt, _frames([("speech", 0.5), ("silence", 1.2)]), utterances=1)
    finally:
        await stt.aclose()
    T = stt_mod.SpeechEventType
    assert [e.type for e in events] == [
        T.START_OF_SPEECH,
        T.INTERIM_TRANSCRIPT,
        T.FINAL_TRANSCRIPT,
        T.END_OF_SPEECH,
    ]
    (session,) = dg.listen_sessions
    kinds = [(m["type"], m.get("speech_final")) for m in session.sent]
    assert ("Results", False) in kinds and ("UtteranceEnd", None) in kinds
    assert ("Results", True) not in kinds


async def test_deepgram_stream_connect_rejected_is_api_status_error(
    dg: DeepgramServerDouble, http: aiohttp.ClientSession
) -> None:
    dg.reject_next(LISTEN_PATH, 401)
    stt = deepgram.STT(api_key="test", base_url=dg.listen_url, http_session=http)
    try:
        with pytest.raises(APIStatusError) as info:
            await _stream_events(stt, _frames([("speech", 0.1)]), utterances=1)
    finally:
        await stt.aclose()
    assert info.value.status_code == 401


async def test_deepgram_prerecorded_recognize(dg: DeepgramServerDouble, http: aiohttp.ClientSession) -> None:
    dg.script_transcripts("Account number four two.")
    stt = deepgram.STT(api_key="test", base_url=dg.listen_url, http_session=http)
    try:
        event = await stt.recognize(_speech_frame(0.5), conn_options=NO_RETRY)
    finally:
        await stt.aclose()
    assert event.alternatives[0].text == "Account number four two."
    assert event.alternatives[0].end_time == pytest.approx(0.5)
    (req,) = dg.requests_for("listen_http")
    assert req.body[:4] == b"RIFF"


async def test_deepgram_tts_chunked_and_streamed(dg: DeepgramServerDouble, http: aiohttp.ClientSession) -> None:
    tts = deepgram.TTS(api_key="test", base_url=dg.speak_url, http_session=http)
    try:
        chunked: list[rtc.AudioFrame] = []
        async with tts.synthesize("Hello there.", conn_options=NO_RETRY) as chunked_stream:
            async for ev in chunked_stream:
                chunked.append(ev.frame)

        streamed: list[rtc.AudioFrame] = []
        async with tts.stream(conn_options=NO_RETRY) as stream:
            stream.push_text("How can I help you today?")
            stream.flush()
            stream.end_input()
            async for ev in stream:
                streamed.append(ev.frame)
    finally:
        await tts.aclose()

    assert sum(f.duration for f in chunked) == pytest.approx(len("Hello there.") * 0.06, abs=0.05)
    assert sum(f.duration for f in streamed) == pytest.approx(len("How can I help you today?") * 0.06, abs=0.05)
    assert all(f.sample_rate == 24_000 for f in chunked + streamed)
    assert dg.spoken_texts == ["Hello there.", "How can I help you today?"]
    assert [r.kind for r in dg.requests] == ["speak_http", "speak_ws"]
    assert dg.requests[1].query["model"] == "aura-2-andromeda-en"


async def test_deepgram_tts_rejection_is_api_status_error(
    dg: DeepgramServerDouble, http: aiohttp.ClientSession
) -> None:
    dg.reject_next(DG_SPEAK_PATH, 500)
    tts = deepgram.TTS(api_key="test", base_url=dg.speak_url, http_session=http)
    try:
        with pytest.raises(APIStatusError) as info:
            async with tts.synthesize("hi", conn_options=NO_RETRY) as stream:
                async for _ in stream:
                    pass
    finally:
        await tts.aclose()
    assert info.value.status_code == 500
