"""`silence_reminder_mode` on a live AgentSession through CallLimits: `auto` has the LLM write the reminder from the
conversation (with the configured message as its example), `static` says the message word for word."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from livekit.agents import Agent, AgentSession, llm

from calls.limits import SILENCE_TIMEOUT, CallLimits
from catalog.pipeline_config import VoicePipelineConfig
from tests.doubles.fake_llm import FakeLLM, Reply

EVENTUALLY_S = 5.0
ASKED = "Could you tell me your order number?"


def writer(chat_ctx: llm.ChatContext, tools: Any) -> Reply:
    """The LLM: answers the caller, and writes a reminder that picks up the last question when told to."""
    texts = [m.text_content or "" for m in chat_ctx.messages()]
    if any("has said nothing" in t for t in texts):
        return Reply(text="Are you still there? I just need that order number.")
    return Reply(text=ASKED)


def agent_lines(session: AgentSession[None]) -> list[str]:
    return [m.text_content or "" for m in session.history.messages() if m.role == "assistant"]


@pytest.fixture
async def session() -> AsyncIterator[tuple[AgentSession[None], FakeLLM]]:
    fake = FakeLLM(writer)
    s: AgentSession[None] = AgentSession(llm=fake)
    await s.start(Agent(instructions="You help callers with their orders."))
    yield s, fake
    await s.aclose()


async def _silence_after_one_turn(session: AgentSession[None], cfg: VoicePipelineConfig) -> tuple[list[str], float]:
    ends: list[str] = []
    limits = CallLimits(session, cfg, on_end=ends.append)
    limits.start()
    try:
        await session.run(user_input="I want to check on my order")
        went_quiet = time.monotonic()
        deadline = time.monotonic() + EVENTUALLY_S
        while not ends and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert ends == [SILENCE_TIMEOUT]
        return agent_lines(session), time.monotonic() - went_quiet
    finally:
        await limits.aclose()


def quiet(**update: Any) -> VoicePipelineConfig:
    # shortened with model_copy: the catalog's minimums do not apply to a test's timeouts
    return VoicePipelineConfig().model_copy(
        update={"silence_timeout_ms": 300, "silence_end_action": "hangup_immediate", **update}
    )


async def test_auto_reminders_are_written_by_the_llm_from_the_conversation(session: Any) -> None:
    s, fake = session
    lines, _ = await _silence_after_one_turn(
        s, quiet(silence_reminder_mode="auto", silence_reminder_message="Still with me?", silence_reminder_count=1)
    )
    assert lines == [ASKED, "Are you still there? I just need that order number."]
    request = fake.calls[-1]
    # the LLM saw the conversation and the reminder brief, with the configured message as its example
    assert request.last_user_text == "I want to check on my order"
    instructions = [m.text for m in request.messages if "has said nothing" in m.text]
    assert instructions and "0.3 seconds" in instructions[0] and '"Still with me?"' in instructions[0]
    assert request.tool_names == ()  # no tools for a reminder


async def test_auto_needs_no_message_and_counts_like_static(session: Any) -> None:
    s, _ = session
    lines, _ = await _silence_after_one_turn(s, quiet(silence_reminder_mode="auto", silence_reminder_count=2))
    assert lines == [ASKED, *["Are you still there? I just need that order number."] * 2]


async def test_static_says_the_message_word_for_word(session: Any) -> None:
    s, fake = session
    lines, _ = await _silence_after_one_turn(s, quiet(silence_reminder_message="Hello? Are you there?"))
    assert lines == [ASKED, "Hello? Are you there?"]
    assert len(fake.calls) == 1  # the reminder did not go to the LLM
