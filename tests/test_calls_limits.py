"""Maximum call duration and the silence timeout (reminders, closing message) on a live AgentSession.

Text-mode sessions (no room, no audio) with a scripted in-process LLM: the agent's and the user's states
change exactly as in a voice call, only faster. Timeouts are shortened with `model_copy`, which skips
the catalog's minimums on purpose.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
from livekit.agents import Agent, AgentSession, llm

from calls.limits import MAX_CALL_DURATION, SILENCE_TIMEOUT, CallLimits
from catalog.pipeline_config import VoicePipelineConfig
from tests.doubles.fake_llm import FakeLLM, Reply

# a bound for "it happens", far above the timeouts used here
EVENTUALLY_S = 5.0


class Ends:
    """The worker's `on_end` callback, recording reasons and when they came."""

    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.event = asyncio.Event()

    async def __call__(self, reason: str) -> None:
        self.reasons.append(reason)
        self.event.set()

    async def wait(self) -> list[str]:
        await asyncio.wait_for(self.event.wait(), EVENTUALLY_S)
        return self.reasons


async def eventually(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + EVENTUALLY_S
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def config(**update: object) -> VoicePipelineConfig:
    return VoicePipelineConfig().model_copy(update=update)


def agent_lines(session: AgentSession) -> list[str]:
    return [
        item.text_content or ""
        for item in session.history.items
        if isinstance(item, llm.ChatMessage) and item.role == "assistant"
    ]


@pytest.fixture
async def session() -> AsyncIterator[AgentSession]:
    s = AgentSession(llm=FakeLLM(default_ttft_s=0.05))
    await s.start(Agent(instructions="You are a test agent."))
    yield s
    await s.aclose()


@pytest.fixture
async def limits_for(session):
    attached: list[CallLimits] = []

    def attach(cfg: VoicePipelineConfig, on_end) -> CallLimits:
        limits = CallLimits(session, cfg, on_end=on_end)
        attached.append(limits)
        limits.start()
        return limits

    yield attach
    for limits in attached:
        await limits.aclose()


async def test_max_call_duration_ends_the_call(session, limits_for) -> None:
    ends = Ends()
    limits = limits_for(config(max_call_duration_ms=300), ends)
    assert await ends.wait() == [MAX_CALL_DURATION]
    assert limits.ended_reason == MAX_CALL_DURATION
    await asyncio.sleep(0.3)  # no second end for the same call
    assert ends.reasons == [MAX_CALL_DURATION]


async def test_silence_reminders_then_closing_message_then_end(session, limits_for) -> None:
    ends = Ends()
    limits = limits_for(
        config(
            silence_timeout_ms=200,
            silence_reminder_message="Are you still there?",
            silence_reminder_count=2,
            silence_end_action="speak_then_hangup",
            silence_end_message="I'll hang up now. Goodbye.",
        ),
        ends,
    )
    assert await ends.wait() == [SILENCE_TIMEOUT]
    assert agent_lines(session) == ["Are you still there?", "Are you still there?", "I'll hang up now. Goodbye."]
    assert limits.reminders_sent == 2


async def test_hangup_immediate_says_nothing(session, limits_for) -> None:
    ends = Ends()
    limits_for(
        config(
            silence_timeout_ms=200,
            silence_reminder_count=0,
            silence_end_action="hangup_immediate",
            silence_end_message="never spoken",
        ),
        ends,
    )
    assert await ends.wait() == [SILENCE_TIMEOUT]
    assert agent_lines(session) == []


async def test_caller_answering_a_reminder_starts_the_count_over(session, limits_for) -> None:
    ends = Ends()
    limits = limits_for(
        config(
            silence_timeout_ms=300,
            silence_reminder_message="Still there?",
            silence_reminder_count=1,
            silence_end_action="hangup_immediate",
        ),
        ends,
    )
    await eventually(lambda: agent_lines(session) == ["Still there?"])
    assert limits.reminders_sent == 1

    await session.run(user_input="Yes, sorry.")
    assert limits.reminders_sent == 0
    assert await ends.wait() == [SILENCE_TIMEOUT]
    # one more reminder after the caller spoke, then the end
    assert agent_lines(session) == ["Still there?", "You said: Yes, sorry.", "Still there?"]


async def test_a_slow_agent_turn_is_not_caller_silence(limits_for) -> None:
    slow = AgentSession(llm=FakeLLM([Reply(text="Here is your answer.", ttft_s=0.8)]))
    await slow.start(Agent(instructions="You are slow."))
    try:
        ends = Ends()
        limits = CallLimits(
            slow,
            config(silence_timeout_ms=400, silence_reminder_count=0, silence_end_action="hangup_immediate"),
            on_end=ends,
        )
        run = asyncio.ensure_future(slow.run(user_input="What is the answer?"))
        # the LLM now thinks for 0.8 s, twice the silence timeout
        await eventually(lambda: slow.agent_state == "thinking")
        limits.start()
        await run
        assert ends.reasons == []
        assert await ends.wait() == [SILENCE_TIMEOUT]
        await limits.aclose()
    finally:
        await slow.aclose()


async def test_stop_cancels_the_limits(session) -> None:
    ends = Ends()
    limits = CallLimits(
        session,
        config(max_call_duration_ms=200, silence_timeout_ms=200, silence_end_action="hangup_immediate"),
        on_end=ends,
    )
    limits.start()
    limits.stop()
    await asyncio.sleep(0.5)
    assert ends.reasons == []


async def test_no_limits_configured_never_ends(session, limits_for) -> None:
    ends = Ends()
    limits_for(config(), ends)
    await asyncio.sleep(0.3)
    assert ends.reasons == []


async def test_sync_on_end_callback_is_accepted(session, limits_for) -> None:
    reasons: list[str] = []
    limits_for(config(max_call_duration_ms=100), reasons.append)
    await eventually(lambda: bool(reasons))
    assert reasons == [MAX_CALL_DURATION]


async def test_the_session_marking_the_user_away_does_not_restart_the_silence_clock() -> None:
    # livekit's own away timer (user_away_timeout) fires in the middle of the silence
    s = AgentSession(llm=FakeLLM(), user_away_timeout=0.2)
    await s.start(Agent(instructions="You are a test agent."))
    limits = CallLimits(s, config(silence_timeout_ms=2000, silence_end_action="hangup_immediate"), on_end=Ends())
    try:
        limits.start()
        clock = limits._silence_timer
        assert clock is not None
        await eventually(lambda: s.user_state == "away")
        assert limits._silence_timer is clock and not clock.cancelled()
    finally:
        await limits.aclose()
        await s.aclose()
