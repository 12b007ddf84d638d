"""The opening turn's fields (the platform's flat `first_speaker`, `mode`, `text`, `instructions`, `interruptible`,
`ai_disclosure_text`, folded into `first_speaking`) on a live roomless AgentSession through `calls.greeting.greet`:
what is said, in what order, how, and whether the caller can cut it off."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from livekit.agents import Agent, AgentSession
from livekit.agents.voice.events import SpeechCreatedEvent

from calls.greeting import DEFAULT_DYNAMIC_GREETING, greet
from catalog.context_vars import ContextVarSpec
from catalog.pipeline_config import VoicePipelineConfig
from catalog.variables import CallVariables
from tests.doubles.fake_llm import FakeLLM

VARIABLES = CallVariables.bootstrap(
    (ContextVarSpec(name="customer_name", type="string", description="Who calls"),),
    defaults={"customer_name": "Dana"},
    seeds=None,
    system={},
)


@pytest.fixture
async def session() -> AsyncIterator[tuple[AgentSession[None], FakeLLM, list[SpeechCreatedEvent]]]:
    fake = FakeLLM(lambda ctx, tools: "Hello Dana, what can I do for you?")
    s: AgentSession[None] = AgentSession(llm=fake)
    created: list[SpeechCreatedEvent] = []
    s.on("speech_created", created.append)
    await s.start(Agent(instructions="You are Acme's agent."))
    yield s, fake, created
    await s.aclose()


async def opening(session: AgentSession[None], **platform_fields: Any) -> list[str]:
    """Greet as the config (platform-shaped, flat fields) says; what the agent said, in order."""
    config = VoicePipelineConfig.model_validate(platform_fields)
    greet(session, config.first_speaking, VARIABLES)
    await asyncio.sleep(0.3)
    return [m.text_content or "" for m in session.history.messages() if m.role == "assistant"]


async def test_the_disclosure_comes_first_and_cannot_be_cut_off(session: Any) -> None:
    s, _, created = session
    said = await opening(
        s, ai_disclosure_text="This call is with an AI assistant.", text="Hi {{ customer_name }}, how can I help?"
    )
    assert said == ["This call is with an AI assistant.", "Hi Dana, how can I help?"]
    assert [(e.source, e.speech_handle.allow_interruptions) for e in created] == [("say", False), ("say", True)]


async def test_interruptible_false_protects_the_greeting(session: Any) -> None:
    s, _, created = session
    await opening(s, text="Hi there.", interruptible=False)
    assert [e.speech_handle.allow_interruptions for e in created] == [False]


async def test_dynamic_mode_has_the_llm_write_the_greeting(session: Any) -> None:
    s, fake, created = session
    said = await opening(s, mode="dynamic", instructions="Greet {{ customer_name }} by name.")
    assert said == ["Hello Dana, what can I do for you?"]
    assert [e.source for e in created] == ["generate_reply"]
    assert any("Greet Dana by name." in m.text for m in fake.calls[0].messages)


async def test_dynamic_mode_without_instructions_uses_the_platform_default(session: Any) -> None:
    s, fake, _ = session
    await opening(s, mode="dynamic")
    assert any(DEFAULT_DYNAMIC_GREETING in m.text for m in fake.calls[0].messages)


async def test_when_the_caller_speaks_first_only_the_disclosure_plays(session: Any) -> None:
    s, fake, _ = session
    said = await opening(s, first_speaker="user", ai_disclosure_text="This call is recorded and with an AI.")
    assert said == ["This call is recorded and with an AI."]
    assert fake.calls == []
