"""Voicemail detection with livekit's AMD through a real roomless AgentSession with audio: the answering side's
first words go through the Silero VAD and a scripted STT, the classifier is the session's (scripted) LLM. A mailbox
gets the voicemail message and the call ends with `voicemail_detected`; a person, or no verdict within the
timeout, gets the greeting; web callers are never screened."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from livekit import rtc
from livekit.agents import Agent, AgentSession, AMDCategory

from catalog.pipeline_config import VoicePipelineConfig
from pipelines.turn_handling import turn_handling_options
from pipelines.vad import SharedVAD
from pipelines.voicemail import VOICEMAIL_DETECTED, VoicemailScreen
from tests.doubles.audio_io import CapturingAudioOutput, ScriptedAudioInput
from tests.doubles.fake_llm import FakeLLM, Reply
from tests.doubles.fake_speech import FakeSTT, FakeTTS
from tests.doubles.wav_fixtures import Clip, require_espeak, synthesize_speech

WAIT_S = 20.0
MAILBOX = "Hi, you have reached Dana Smith. I cannot take your call right now, please leave a message after the tone."
GREETING = "Hello, this is Acme calling about your order."
MESSAGE = "Hi Dana, this is Acme. Your order is ready, please call us back."


@dataclass
class Participant:
    """Stands in for the remote participant: a phone line (SIP) or a browser."""

    kind: int = rtc.ParticipantKind.PARTICIPANT_KIND_SIP
    identity: str = "sip_+15550100"


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Any:
    require_espeak()
    cache = Path(tmp_path_factory.mktemp("speech"))
    return lambda text: synthesize_speech(text, cache_dir=cache)


def classifier(label: str) -> Any:
    """The LLM: AMD's classification request (it offers `save_prediction`) gets `label`; anything else a reply."""

    def script(chat_ctx: Any, tools: Any) -> Reply:
        if any(getattr(t, "id", None) == "save_prediction" for t in tools or ()):
            return Reply(tool_calls=[("save_prediction", {"label": label})])
        return Reply(text="How can I help?")

    return script


@dataclass
class Call:
    session: AgentSession[None]
    caller: ScriptedAudioInput
    speaker: CapturingAudioOutput
    tts: FakeTTS
    screen: VoicemailScreen | None
    ended: list[tuple[str, float]] = field(default_factory=list)

    def spoken(self) -> str:
        """Everything sent to the TTS (it gets one sentence per request)."""
        return " ".join(r.text for r in self.tts.requests)

    def said(self) -> list[str]:
        """What the agent said, as the history keeps it (interrupted speech included, marked)."""
        return [
            f"{m.text_content}{' [cut]' if m.interrupted else ''}"
            for m in self.session.history.messages()
            if m.role == "assistant"
        ]


@pytest.fixture
async def call() -> AsyncIterator[Any]:
    calls: list[Call] = []

    async def start(
        audio: list[Clip | float],
        transcripts: list[str],
        label: str,
        *,
        caller: Participant | None = None,
        **fields: Any,
    ) -> Call:
        config = VoicePipelineConfig.model_validate(
            {"voicemail_detection_mode": "leave_message", "voicemail_message": MESSAGE, **fields}
        )
        tts = FakeTTS(ttfb_s=0.05, seconds_per_char=0.03)
        session: AgentSession[None] = AgentSession(
            vad=SharedVAD.load().for_pipeline(config),
            stt=FakeSTT(transcripts, latency_s=0.1),
            llm=FakeLLM(classifier(label)),
            tts=tts,
            turn_handling=turn_handling_options(config),
            aec_warmup_duration=None,
            session_close_transcript_timeout=0.1,
        )
        line, speaker = ScriptedAudioInput(audio), CapturingAudioOutput()
        session.input.audio, session.output.audio = line, speaker
        await session.start(Agent(instructions="You call customers about their orders."))
        ended: list[tuple[str, float]] = []
        screen = await VoicemailScreen.start(
            session,
            config,
            caller=caller or Participant(),  # type: ignore[arg-type]  # the participant double
            classifier=None,
            on_end=lambda reason: ended.append((reason, time.time())),
        )
        c = Call(session, line, speaker, tts, screen, ended)
        calls.append(c)
        # the bootstrap greets right after the session starts; the screen holds it until the verdict
        session.say(GREETING)
        return c

    yield start
    for c in calls:
        if c.screen is not None:
            await c.screen.aclose()
        c.caller.close()
        await c.session.aclose()
        await c.speaker.aclose()


async def test_a_mailbox_gets_the_message_and_the_call_ends_as_voicemail(call: Any, speech: Any) -> None:
    c = await call([0.3, speech(MAILBOX), 6.0], [MAILBOX], "machine-vm")
    assert c.screen is not None
    verdict = await asyncio.wait_for(c.screen.wait(), WAIT_S)
    assert verdict is not None and verdict.category == AMDCategory.MACHINE_VM
    assert [reason for reason, _ in c.ended] == [VOICEMAIL_DETECTED]
    # the message was spoken after the mailbox's greeting, and the call ended after it
    assert MESSAGE in c.spoken()
    await asyncio.sleep(0.2)
    assert c.said() == [MESSAGE]  # neither the greeting nor a reply to the mailbox was played
    message = next(s for s in c.speaker.segments if s.finished_at is not None and not s.interrupted)
    mailbox_end = c.caller.speech[0].ended_at
    assert mailbox_end is not None and message.first_frame_at > mailbox_end
    assert message.finished_at is not None and c.ended[0][1] >= message.finished_at


async def test_a_full_mailbox_ends_the_call_without_a_message(call: Any, speech: Any) -> None:
    full = "The mailbox of the person you are calling is full and cannot accept any messages at this time."
    c = await call([0.3, speech(full), 6.0], [full], "machine-unavailable")
    assert c.screen is not None
    verdict = await asyncio.wait_for(c.screen.wait(), WAIT_S)
    assert verdict is not None and verdict.category == AMDCategory.MACHINE_UNAVAILABLE
    assert [reason for reason, _ in c.ended] == [VOICEMAIL_DETECTED]
    assert MESSAGE not in c.spoken()


async def test_a_person_gets_the_greeting(call: Any, speech: Any) -> None:
    c = await call([0.3, speech("Hello?"), 4.0], ["Hello?"], "machine-vm")
    assert c.screen is not None
    verdict = await asyncio.wait_for(c.screen.wait(), WAIT_S)
    assert verdict is not None and verdict.category == AMDCategory.HUMAN  # a short hello: no LLM needed
    greeting = await c.speaker.wait_for_playout_of(0, timeout=WAIT_S)
    hello_end = c.caller.speech[0].ended_at
    assert hello_end is not None and greeting.first_frame_at > hello_end  # held until the verdict
    assert c.ended == [] and GREETING in c.spoken()


async def test_no_verdict_within_the_timeout_means_the_call_goes_on(call: Any) -> None:
    c = await call([8.0], [], "machine-vm", voicemail_detection_timeout_ms=1500)
    assert c.screen is not None
    started = time.time()
    verdict = await asyncio.wait_for(c.screen.wait(), WAIT_S)
    waited = time.time() - started
    assert verdict is not None and verdict.category == AMDCategory.UNCERTAIN and verdict.reason == "detection_timeout"
    assert 1.3 <= waited < 2.5, waited
    await c.speaker.wait_for_playout_of(0, timeout=WAIT_S)
    assert c.ended == [] and GREETING in c.spoken()


async def test_web_callers_and_mode_off_are_not_screened(call: Any) -> None:
    browser = await call(
        [1.0], [], "machine-vm", caller=Participant(kind=rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD)
    )
    assert browser.screen is None
    off = await call([1.0], [], "machine-vm", voicemail_detection_mode="off")
    assert off.screen is None
    await browser.speaker.wait_for_playout_of(0, timeout=WAIT_S)
    assert GREETING in browser.spoken()
