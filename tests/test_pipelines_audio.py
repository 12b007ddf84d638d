"""A built pipeline hears a spoken clip through the real Silero VAD, ends the user turn under the
configured endpointing, and speaks back through the TTS: every provider is the OpenAI double over
HTTP (transcription, chat, speech), in-process, without a room.

Latency is measured by benchmarks/pipeline_latency.py; the bounds here only separate "the config's
delay ends the turn" from "Silero's stop_secs ends the turn", which differ by more than a second.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from livekit.agents import Agent, AgentSession, llm
from livekit.agents.voice.events import ConversationItemAddedEvent, UserStateChangedEvent

from catalog.pipeline_config import ModelChainEntry, STTEntry, TTSEntry, VoicePipelineConfig
from pipelines.builder import build_pipeline
from pipelines.vad import SharedVAD
from tests.doubles.audio_io import CapturingAudioOutput, ScriptedAudioInput
from tests.doubles.openai_server import CHAT_PATH, SPEECH_PATH, TRANSCRIPTION_PATH, OpenAIServerDouble
from tests.doubles.wav_fixtures import require_espeak, synthesize_speech
from worker.settings import Settings

PHRASE = "I would like a refund for my order please"
REPLY = "Of course, what is the order number?"
MIN_DELAY_S = 0.3
# long enough that a VAD configured straight from it would visibly hold the turn
STOP_SECS = 1.5


@pytest.fixture(scope="module")
def speech_clip(tmp_path_factory: pytest.TempPathFactory):
    require_espeak()
    return synthesize_speech(PHRASE, cache_dir=Path(tmp_path_factory.mktemp("speech")))


@pytest.fixture
async def oai() -> AsyncIterator[OpenAIServerDouble]:
    async with OpenAIServerDouble() as server:
        yield server


def voice_config(base_url: str) -> VoicePipelineConfig:
    return VoicePipelineConfig(
        stt_chain=[STTEntry(provider="openai_compatible", model="whisper-1", base_url=base_url)],
        model_chain=[ModelChainEntry(provider="openai_compatible", model="local-llm", base_url=base_url)],
        tts_chain=[TTSEntry(provider="openai_compatible", model="tts-1", voice_id="alloy", base_url=base_url)],
        local_vad_params={"confidence": 0.5, "start_secs": 0.1, "stop_secs": STOP_SECS},
        turn_detection="vad",
        endpointing_min_delay_ms=int(MIN_DELAY_S * 1000),
        endpointing_max_delay_ms=3000,
        preemptive_generation=False,
    )


async def test_spoken_turn_ends_at_the_configured_delay_and_the_agent_answers(
    oai: OpenAIServerDouble, speech_clip, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_COMPATIBLE_API_KEY", raising=False)
    oai.script_transcription(PHRASE)
    oai.script_chat(REPLY)
    pipeline = build_pipeline(voice_config(oai.base_url), Settings(_env_file=None), vad=SharedVAD.load())
    session = AgentSession(**pipeline.session_kwargs())
    caller = ScriptedAudioInput([0.3, speech_clip, 3.0])
    speaker = CapturingAudioOutput()
    session.input.audio = caller
    session.output.audio = speaker

    user_states: list[str] = []
    committed_at: list[float] = []

    def on_user_state(ev: UserStateChangedEvent) -> None:
        user_states.append(ev.new_state)

    def on_item(ev: ConversationItemAddedEvent) -> None:
        if isinstance(ev.item, llm.ChatMessage) and ev.item.role == "user":
            committed_at.append(time.time())

    session.on("user_state_changed", on_user_state)
    session.on("conversation_item_added", on_item)
    await session.start(Agent(instructions="You are Acme's support agent."))
    try:
        mark = await caller.wait_for_speech_end(0, timeout=10)
        segment = await speaker.wait_for_segment(0, timeout=10)
        await speaker.wait_for_playout_of(0, timeout=10)
    finally:
        caller.close()
        await session.aclose()
        await pipeline.aclose()
        await speaker.aclose()

    # the VAD heard the caller start and stop
    assert user_states[:2] == ["speaking", "listening"]

    # the turn was committed once, after the configured delay and well before stop_secs would allow
    assert len(committed_at) == 1
    assert mark.ended_at is not None
    turn_end_delay = committed_at[0] - mark.ended_at
    assert MIN_DELAY_S <= turn_end_delay < STOP_SECS - 0.1, turn_end_delay

    # the VAD's speech went to the STT, its transcript to the LLM, the LLM's words to the TTS
    [transcription] = oai.requests_for(path=TRANSCRIPTION_PATH)
    assert transcription.model == "whisper-1"
    assert transcription.file is not None and len(transcription.file) > 0.5 * 16000 * 2
    [chat] = oai.requests_for(path=CHAT_PATH)
    assert chat.last_user_text == PHRASE
    speech_requests = oai.requests_for(path=SPEECH_PATH)
    assert " ".join(r.body["input"] for r in speech_requests) == REPLY
    assert {(r.model, r.body["voice"]) for r in speech_requests} == {("tts-1", "alloy")}

    # and the agent's answer reached the loudspeaker, after the caller had finished
    assert segment.first_frame_at > mark.ended_at
    assert segment.pushed_duration > 0.2
    assert not segment.interrupted
    assert [m.text_content for m in session.history.messages() if m.role == "assistant"] == [REPLY]
