"""The built LLM talks real HTTP to an OpenAI chat-completions double, and its fallback chain switches
to the second model within the configured timeout when the first answers 500 or hangs."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from livekit.agents import Agent, AgentSession

from catalog.pipeline_config import ModelChainEntry, STTEntry, TTSEntry, VoicePipelineConfig
from pipelines.builder import BuiltPipeline, build_pipeline
from pipelines.vad import SharedVAD
from tests.doubles.openai_server import CHAT_PATH, OpenAIServerDouble, Reply
from worker.settings import Settings

PRIMARY = "llama3.2:3b"
SECOND = "gpt-4.1-mini"
# what a slow scheduler may add on top of a timeout on a 2-core machine
MARGIN_S = 2.5


@pytest.fixture(scope="module")
def shared_vad() -> SharedVAD:
    return SharedVAD.load()


@pytest.fixture
async def oai() -> AsyncIterator[OpenAIServerDouble]:
    async with OpenAIServerDouble() as server:
        yield server


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for env in ("OPENAI_API_KEY", "DEEPGRAM_API_KEY", "OPENAI_COMPATIBLE_API_KEY"):
        monkeypatch.delenv(env, raising=False)
    return Settings(_env_file=None, OPENAI_API_KEY="sk-test-openai")


def two_model_config(
    base_url: str, *, primary_timeout_ms: int | None = None, attempt_timeout_ms: int = 5000
) -> VoicePipelineConfig:
    """A self-hosted primary and an "OpenAI" second, both served by the double."""
    return VoicePipelineConfig(
        stt_chain=[STTEntry(provider="openai_compatible", base_url=base_url)],
        model_chain=[
            ModelChainEntry(
                provider="openai_compatible",
                base_url=base_url,
                model=PRIMARY,
                config={"temperature": 0.6, "max_tokens": 250, "request_timeout_ms": primary_timeout_ms},
            ),
            ModelChainEntry(
                provider="openai",
                base_url=base_url,
                model=SECOND,
                config={"temperature": 0.3, "max_tokens": 120},
            ),
        ],
        tts_chain=[TTSEntry(provider="openai_compatible", base_url=base_url)],
        fallback={"llm_attempt_timeout_ms": attempt_timeout_ms},
    )


class Receptionist(Agent):
    def __init__(self) -> None:
        super().__init__(instructions="You are Acme's receptionist. Answer in one short sentence.")


@pytest.fixture
async def start_session(settings, shared_vad):
    opened: list[tuple[AgentSession, BuiltPipeline]] = []

    async def start(config: VoicePipelineConfig) -> AgentSession:
        pipeline = build_pipeline(config, settings, vad=shared_vad)
        # text mode: no room and no audio I/O, so only the LLM of the pipeline is exercised
        session = AgentSession(llm=pipeline.llm, conn_options=pipeline.conn_options)
        opened.append((session, pipeline))
        await session.start(Receptionist())
        return session

    yield start
    for session, pipeline in opened:
        await session.aclose()
        await pipeline.aclose()


async def reply_text(session: AgentSession, user_input: str) -> str:
    result = await session.run(user_input=user_input)
    message = result.expect.next_event().is_message(role="assistant").event().item
    return message.text_content or ""


async def test_reply_arrives_over_http_with_the_configured_request(oai, start_session) -> None:
    oai.script_chat("We open at nine.", model=PRIMARY)
    session = await start_session(two_model_config(oai.base_url))

    assert await reply_text(session, "When do you open?") == "We open at nine."

    [request] = oai.requests_for(path=CHAT_PATH)
    assert request.model == PRIMARY
    assert request.stream is True
    assert request.body["temperature"] == 0.6
    assert request.body["max_tokens"] == 250
    assert "Acme's receptionist" in request.system_prompt
    assert request.last_user_text == "When do you open?"
    assert request.headers["Authorization"] == "<redacted>"


async def test_primary_500_switches_to_second_and_the_conversation_continues(oai, start_session) -> None:
    oai.set_chat_responder(lambda body: Reply(status=500), model=PRIMARY)
    oai.script_chat("Sure, I can help with your order.", "It ships tomorrow.", model=SECOND)
    session = await start_session(two_model_config(oai.base_url, attempt_timeout_ms=2000))

    started = time.monotonic()
    assert await reply_text(session, "I need help with an order.") == "Sure, I can help with your order."
    assert time.monotonic() - started < 2.0 + MARGIN_S

    second_request = oai.requests_for(path=CHAT_PATH, model=SECOND)[0]
    assert second_request.body["temperature"] == 0.3
    assert second_request.body["max_completion_tokens"] == 120

    # the next turn still gets an answer, with the first exchange in its context
    assert await reply_text(session, "When does it ship?") == "It ships tomorrow."
    last = oai.requests_for(path=CHAT_PATH, model=SECOND)[-1]
    assert "Sure, I can help with your order." in [m.get("content") for m in last.messages]


async def test_hanging_primary_times_out_at_its_own_request_timeout(oai, start_session) -> None:
    oai.set_chat_responder(lambda body: Reply(hang=True), model=PRIMARY)
    oai.script_chat("Our plans start at 20 dollars.", model=SECOND)
    # the entry's 800 ms wins over the chain's 5 s attempt timeout
    session = await start_session(two_model_config(oai.base_url, primary_timeout_ms=800, attempt_timeout_ms=5000))

    started = time.monotonic()
    assert await reply_text(session, "How much is it?") == "Our plans start at 20 dollars."
    elapsed = time.monotonic() - started
    assert 0.8 <= elapsed < 0.8 + MARGIN_S
    assert oai.chat_count(PRIMARY) >= 1


async def test_hanging_primary_times_out_at_the_chain_attempt_timeout(oai, start_session) -> None:
    oai.set_chat_responder(lambda body: Reply(hang=True), model=PRIMARY)
    oai.script_chat("Yes, we deliver on Saturdays.", "You're welcome.", model=SECOND)
    session = await start_session(two_model_config(oai.base_url, attempt_timeout_ms=1000))

    started = time.monotonic()
    assert await reply_text(session, "Do you deliver on Saturdays?") == "Yes, we deliver on Saturdays."
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 1.0 + MARGIN_S

    # the primary is now marked unavailable: the next turn goes straight to the second model
    started = time.monotonic()
    assert await reply_text(session, "Thanks!") == "You're welcome."
    assert time.monotonic() - started < 1.0
