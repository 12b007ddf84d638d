"""Keypad digits into one user turn, through a real roomless AgentSession and a real `rtc.Room`'s
`sip_dtmf_received` event (the event LiveKit raises for a SIP caller's keypad and for a web page's
`publishDtmf`): termination digit, maximum digits, inter-digit timeout, prefix, and the turn the LLM gets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from livekit import rtc
from livekit.agents import Agent, AgentSession

from catalog.pipeline_config import VoicePipelineConfig
from pipelines.dtmf import DtmfCollector
from tests.doubles.audio_io import CapturingAudioOutput
from tests.doubles.fake_llm import FakeLLM
from tests.doubles.fake_speech import FakeTTS

WAIT_S = 10.0
CODES = {**{str(d): d for d in range(10)}, "*": 10, "#": 11, "A": 12, "B": 13, "C": 14, "D": 15}


@dataclass
class AgentParticipant:
    """Stands in for a remote participant that is another agent."""

    kind: int = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
    identity: str = "agent-other"


@dataclass
class Call:
    session: AgentSession[None]
    room: rtc.Room
    llm: FakeLLM
    collector: DtmfCollector
    speaker: CapturingAudioOutput

    def press(self, keys: str, participant: Any = None) -> float:
        for key in keys:
            self.room.emit("sip_dtmf_received", rtc.SipDTMF(code=CODES[key], digit=key, participant=participant))
        return time.time()

    def user_turns(self) -> list[str]:
        return [m.text_content or "" for m in self.session.history.messages() if m.role == "user"]

    async def wait_turns(self, count: int, timeout: float = WAIT_S) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.llm.calls) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return [c.last_user_text or "" for c in self.llm.calls]


@pytest.fixture
async def call() -> AsyncIterator[Any]:
    calls: list[Call] = []

    async def start(**fields: Any) -> Call:
        config = VoicePipelineConfig.model_validate({"dtmf_enabled": True, **fields})
        fake = FakeLLM(lambda ctx, tools: "Thank you.")
        session: AgentSession[None] = AgentSession(llm=fake, tts=FakeTTS(ttfb_s=0.02, seconds_per_char=0.1))
        speaker = CapturingAudioOutput()
        session.output.audio = speaker
        await session.start(Agent(instructions="Be brief."))
        room = rtc.Room()
        collector = DtmfCollector.attach(session, config, room)
        assert collector is not None
        c = Call(session, room, fake, collector, speaker)
        calls.append(c)
        return c

    yield start
    for c in calls:
        await c.session.aclose()
        await c.speaker.aclose()
        c.collector.detach()


async def test_digits_up_to_the_termination_digit_reach_the_llm_as_one_user_turn(call: Any) -> None:
    c = await call()
    c.press("4711#")
    assert await c.wait_turns(1) == ["Keypad input: 4711"]
    await c.speaker.wait_for_playout_of(0, timeout=WAIT_S)
    await asyncio.sleep(0.1)
    assert len(c.llm.calls) == 1  # one turn, not one per key
    assert c.user_turns() == ["Keypad input: 4711"]
    assert [m.role for m in c.session.history.messages()] == ["user", "assistant"]


async def test_max_digits_ends_the_entry_at_once(call: Any) -> None:
    c = await call(dtmf_max_digits=4, dtmf_inter_digit_timeout_ms=5000)
    pressed = c.press("5678")
    assert await c.wait_turns(1) == ["Keypad input: 5678"]
    assert c.llm.calls[0].started_at - pressed < 0.5
    c.press("90#")
    assert await c.wait_turns(2) == ["Keypad input: 5678", "Keypad input: 90"]


async def test_the_inter_digit_timeout_ends_the_entry(call: Any) -> None:
    c = await call(dtmf_inter_digit_timeout_ms=800)
    c.press("4")
    await asyncio.sleep(0.5)
    last = c.press("2")  # each key restarts the wait
    assert await c.wait_turns(1) == ["Keypad input: 42"]
    waited = c.llm.calls[0].started_at - last
    assert 0.8 <= waited < 1.3, waited


async def test_prefix_and_no_termination_digit(call: Any) -> None:
    c = await call(dtmf_prefix="PIN entered: ", dtmf_termination_digit="", dtmf_inter_digit_timeout_ms=300)
    c.press("12#")
    assert await c.wait_turns(1) == ["PIN entered: 12#"]


async def test_a_lone_termination_digit_is_sent_as_itself(call: Any) -> None:
    c = await call(dtmf_termination_digit="*")
    c.press("*")
    assert await c.wait_turns(1) == ["Keypad input: *"]


async def test_keys_from_another_agent_are_ignored(call: Any) -> None:
    c = await call(dtmf_inter_digit_timeout_ms=250)
    c.press("99#", participant=AgentParticipant())
    await asyncio.sleep(0.6)
    assert c.llm.calls == [] and c.collector.sent == []


async def test_the_entry_cuts_off_the_agent_and_is_answered(call: Any) -> None:
    c = await call()
    c.session.say("Please enter your account number followed by the pound key, then wait for the confirmation.")
    segment = await c.speaker.wait_for_segment(0, timeout=WAIT_S)
    await asyncio.sleep(0.5)
    c.press("123#")
    assert await c.wait_turns(1) == ["Keypad input: 123"]
    cut = await c.speaker.wait_for_playout_of(0, timeout=WAIT_S)
    assert cut is segment and cut.interrupted
    answer = await c.speaker.wait_for_playout_of(1, timeout=WAIT_S)
    assert answer.first_frame_at > c.llm.calls[0].started_at
    await asyncio.sleep(0.1)
    history = [(m.role, m.text_content, m.interrupted) for m in c.session.history.messages()]
    assert [(role, interrupted) for role, _, interrupted in history] == [
        ("assistant", True),
        ("user", False),
        ("assistant", False),
    ]
    assert [text for _, text, _ in history[1:]] == ["Keypad input: 123", "Thank you."]


async def test_off_or_without_a_room_nothing_listens() -> None:
    session: AgentSession[None] = AgentSession(llm=FakeLLM())
    await session.start(Agent(instructions="x"))
    try:
        assert DtmfCollector.attach(session, VoicePipelineConfig(), rtc.Room()) is None
        assert DtmfCollector.attach(session, VoicePipelineConfig(dtmf_enabled=True), None) is None
    finally:
        await session.aclose()
