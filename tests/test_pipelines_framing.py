"""Persona, reply language and pronunciation overrides: what the call's pipeline adds to every agent, through the
real bootstrap (`start_call`) with a scripted LLM and a recording TTS behind a capturing loudspeaker. The persona
and the language rule frame the instructions the LLM gets; the overrides change what the TTS reads and nothing
else (the transcript keeps the words as written)."""

from __future__ import annotations

import asyncio
import random
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from livekit.agents.testing import fake_job_context

from calls.bootstrap import start_call
from calls.call import Call, CallServices
from catalog.loader import CatalogStore
from contract.dispatch import DispatchRequest, mint_dispatch_metadata
from contract.settings import EXAMPLE_CATALOG
from pipelines.pronunciation import Pronunciation
from tests.doubles.audio_io import CapturingAudioOutput
from tests.doubles.fake_llm import FakeLLM, Reply
from tests.doubles.fake_speech import FakeTTS
from worker.settings import Settings

SUPPORT = uuid.UUID("5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01")
TEAM = uuid.UUID("3a9f8e7d-6c5b-4a4f-9e3d-2c1b0a9f8e01")
PERSONA_START = "You speak for Acme, a home-goods shop"
REPLY = "Your SKU 42 ships today; acme will text you. MySQL and SQLite are not our SKUs."


# -- the rules ------------------------------------------------------------------------------------------------------

OVERRIDES = {
    "SKU": "skew",
    "Acme": "Ack-mee",
    "Acme Corp": "Ack-mee Corporation",
    "C++": "C plus plus",
    "SQL": "sequel",
}


@pytest.mark.parametrize(
    ("written", "spoken"),
    [
        ("Your SKU is ready.", "Your skew is ready."),
        ("sku, Sku and SKUs", "skew, skew and SKUs"),  # any case; whole words only
        ("MySQL, SQLite and (SQL).", "MySQL, SQLite and (sequel)."),
        ("Acme Corp and Acme", "Ack-mee Corporation and Ack-mee"),  # the longest key first
        ("acme   corp", "Ack-mee Corporation"),  # any whitespace between a key's words
        ("We teach C++ and C.", "We teach C plus plus and C."),
        ("Ack-mee", "Ack-mee"),  # a replacement is not matched again
    ],
)
def test_override_rules(written: str, spoken: str) -> None:
    assert Pronunciation(OVERRIDES).apply(written) == spoken


async def test_streamed_text_gets_the_same_overrides_however_it_is_split() -> None:
    pronunciation = Pronunciation(OVERRIDES)
    text = "Hello from Acme Corp! Your SKU list: SQL, C++ and more SKU items from acme corp today."
    rng = random.Random(7)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, 12)))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]

        async def stream(parts: list[str] = pieces) -> AsyncIterator[str]:
            for part in parts:
                yield part

        assert "".join([p async for p in pronunciation.rewrite(stream())]) == pronunciation.apply(text)


# -- through the bootstrap ------------------------------------------------------------------------------------------


@pytest.fixture
def settings() -> Settings:
    return Settings(
        _env_file=None, VOICE_WORKER_MODE="dev", OPENAI_API_KEY="sk-test-not-real", DEEPGRAM_API_KEY="dg-test-not-real"
    )


def catalog_with(tmp_path: Path, **pipeline: Any) -> Path:
    """The example catalog with fields added to the support agent's and the team's pipelines."""
    target = tmp_path / "catalog"
    shutil.copytree(EXAMPLE_CATALOG, target, ignore=shutil.ignore_patterns("scenarios"))
    for name, pick in (("support.yaml", lambda d: d["revisions"][0]), ("front-desk-team.yaml", lambda d: d)):
        document = yaml.safe_load((target / name).read_text())
        pick(document)["pipeline"].update(pipeline)
        (target / name).write_text(yaml.safe_dump(document, sort_keys=False))
    return target


def script(chat_ctx: Any, tools: Any) -> Reply:
    """Routers (a procedure, a team member) get their one tool called; everything else gets REPLY."""
    name = getattr(tools[0], "id", "") if tools else ""
    if name == "choose_procedure":
        return Reply(tool_calls=[(name, {"name": "refund_request"})])
    if name == "choose_team_member":
        return Reply(tool_calls=[(name, {"name": "support"})])
    return Reply(text=REPLY)


def answers(fake: FakeLLM) -> list[Any]:
    """The requests that spoke for an agent (not a router's)."""
    return [c for c in fake.calls if not any(t.startswith("choose_") for t in c.tool_names)]


async def _call(
    settings: Settings, catalog: Path, **target: Any
) -> tuple[Call, FakeLLM, FakeTTS, CapturingAudioOutput]:
    fake, tts, speaker = FakeLLM(script), FakeTTS(ttfb_s=0.01, seconds_per_char=0.005), CapturingAudioOutput()
    services = CallServices(
        settings=settings, catalog=CatalogStore(catalog), session_kwargs=lambda _: {"llm": fake, "tts": tts}
    )
    metadata = mint_dispatch_metadata(
        DispatchRequest(
            session_id=uuid.uuid4(),
            session_type="test",
            context_variables={"customer_name": "Dana"} if "agent_id" in target else None,
            **target,
        ),
        secret=settings.signing_secret(),
        issuer=settings.dispatch_issuer,
    )
    with fake_job_context(job_metadata=metadata) as ctx:

        def before_start(session: Any) -> None:
            session.output.audio = speaker

        call = await start_call(ctx, services, room=None, before_start=before_start)
    return call, fake, tts, speaker


async def _turn(call: Call, speaker: CapturingAudioOutput, text: str) -> None:
    await speaker.wait_for_playout_of(0, timeout=10)  # the greeting
    await call.session.run(user_input=text)
    await speaker.wait_for_playout_of(len(speaker.segments) - 1, timeout=10)
    await asyncio.sleep(0.05)


async def test_pronunciation_reaches_the_tts_and_the_transcript_keeps_the_words(settings: Settings, tmp_path) -> None:
    catalog = catalog_with(tmp_path, pronunciation_overrides={"SKU": "skew", "Acme": "Ack-mee", "SQL": "sequel"})
    call, _, tts, speaker = await _call(settings, catalog, agent_id=SUPPORT)
    try:
        await _turn(call, speaker, "Where is my blender?")
        spoken = " ".join(r.text for r in tts.requests)
        # the greeting ("thanks for calling Acme support") and the reply, as the TTS read them
        assert "thanks for calling Ack-mee support" in spoken
        assert "Your skew 42 ships today; Ack-mee will text you. MySQL and SQLite are not our SKUs." in spoken
        said = [m.text_content for m in call.session.history.messages() if m.role == "assistant"]
        assert said[-1] == REPLY and "thanks for calling Acme support" in (said[0] or "")
        assert "Ack-mee" not in " ".join(s or "" for s in said)
    finally:
        await call.finish()


async def test_the_persona_leads_the_instructions_and_the_language_rule_ends_them(settings: Settings, tmp_path) -> None:
    catalog = catalog_with(tmp_path, multilingual_enabled=True, multilingual_languages=["en", "es"])
    call, fake, _, speaker = await _call(settings, catalog, agent_id=SUPPORT)
    try:
        await _turn(call, speaker, "Hola, quiero devolver una licuadora")
        reply = answers(fake)[-1]
        instructions = reply.instructions or ""
        assert instructions.startswith(PERSONA_START)
        # the revision's system prompt (rendered) and the chosen procedure sit between them
        assert "The caller is Dana" in instructions and "Follow this procedure" in instructions
        assert instructions.rstrip().endswith("switch when the caller switches.")
        assert "english (en), spanish (es)" in instructions
    finally:
        await call.finish()


async def test_every_team_member_speaks_as_the_teams_persona(settings: Settings, tmp_path) -> None:
    catalog = catalog_with(tmp_path)
    call, fake, _, speaker = await _call(settings, catalog, team_id=TEAM)
    try:
        await _turn(call, speaker, "I want a refund")
        answered = answers(fake)
        assert answered and all((c.instructions or "").startswith(PERSONA_START) for c in answered)
    finally:
        await call.finish()


async def test_without_a_persona_the_instructions_are_the_system_prompt(settings: Settings, tmp_path) -> None:
    catalog = catalog_with(tmp_path, persona_id=None)
    call, fake, _, speaker = await _call(settings, catalog, agent_id=SUPPORT)
    try:
        await _turn(call, speaker, "Where is my blender?")
        reply = answers(fake)[-1]
        assert (reply.instructions or "").startswith("You are Acme's phone support agent.")
    finally:
        await call.finish()
