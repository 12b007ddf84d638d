"""Voice mode's parts that need no server: the caller's voice from the registry, the observation read from a session
record and the agent's `voice_worker.simulation` attribute (published on simulated calls only), expectations it
cannot see failing with the reason, and the command failing a scenario whose caller cannot speak. The calls
themselves, on a real livekit-server with the worker process: tests/e2e/test_simulate_voice.py."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from livekit.agents import llm, stt

from calls import status as call_status
from catalog.loader import load_catalog
from catalog.pipeline_config import STTEntry, TTSEntry
from contract.settings import EXAMPLE_CATALOG
from records import migrate
from records.outcome import MemberChange, ProcedureChoice, SessionOutcome, ToolCallRecord, TranscriptItem
from records.record import SessionRecord
from records.store import SessionStore
from simulations.caller_voice import VoiceUnavailable, caller_voice_entries, provider_voices
from simulations.expectations import evaluate
from simulations.results import Observed
from simulations.scenario import CallerVoice, Expectations, ToolExpectation
from simulations.voice_mode import observe_record
from worker.settings import Settings

SUPPORT = uuid.UUID("5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01")
FRONT_DESK = uuid.UUID("3a9f8e7d-6c5b-4a4f-9e3d-2c1b0a9f8e01")
CATALOG = load_catalog(EXAMPLE_CATALOG)


def settings(**keys: str | None) -> Settings:
    values: dict[str, Any] = {"OPENAI_API_KEY": "sk-test-not-real", "DEEPGRAM_API_KEY": "dg-test-not-real", **keys}
    return Settings(_env_file=None, VOICE_WORKER_MODE="dev", **values)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SessionStore]:
    url = f"sqlite:///{tmp_path / 'records.db'}"
    await asyncio.to_thread(migrate.upgrade, url)
    opened = SessionStore(url, retention_days=30)
    try:
        yield opened
    finally:
        await opened.aclose()


# --- the caller's voice --------------------------------------------------------------------------------------


async def test_the_caller_speaks_and_hears_with_the_pipelines_first_providers_unless_the_scenario_says() -> None:
    pipeline = CATALOG.agents[SUPPORT].active_revision.pipeline
    assert caller_voice_entries(CallerVoice(), pipeline) == (pipeline.tts_chain[0], pipeline.stt_chain[0])
    chosen = CallerVoice(tts=TTSEntry(provider="deepgram"), stt=STTEntry(provider="openai"))
    assert caller_voice_entries(chosen, pipeline) == (chosen.tts, chosen.stt)

    voice, ears = provider_voices(settings())(CallerVoice(), pipeline)
    try:
        assert type(voice).__module__.startswith("pipelines") and voice.model == "gpt-4o-mini-tts"  # OpenAI's TTS
        assert ears.capabilities.streaming and ears.model == "nova-3"  # Deepgram's streaming STT
    finally:
        await asyncio.gather(voice.aclose(), ears.aclose())
    # a batch STT hears through a VAD, as the agent's does
    voice, ears = provider_voices(settings())(chosen, pipeline)
    try:
        assert isinstance(ears, stt.StreamAdapter) and ears.capabilities.streaming
    finally:
        await asyncio.gather(voice.aclose(), ears.aclose())

    with pytest.raises(
        VoiceUnavailable, match="DEEPGRAM_API_KEY is not set \\(needed for the caller's deepgram STT\\)"
    ):
        provider_voices(settings(DEEPGRAM_API_KEY=None))(CallerVoice(), pipeline)
    with pytest.raises(VoiceUnavailable, match="provider 'acme' has no TTS"):
        provider_voices(settings())(CallerVoice(tts=TTSEntry(provider="acme")), pipeline)


# --- what the agent publishes on a simulated call ------------------------------------------------------------


def _call(session_type: str) -> Any:
    agent = CATALOG.agents[SUPPORT]
    history = llm.ChatContext()
    history.add_message(role="user", content="Call me back please")
    history.items.append(
        llm.FunctionCall(call_id="c1", name="record_variable", arguments='{"name": "wants_callback", "value": "true"}')
    )
    history.items.append(llm.FunctionCallOutput(call_id="c1", name="record_variable", output="secret", is_error=False))
    admission = SimpleNamespace(
        agent=agent,
        revision=agent.active_revision,
        team=None,
        claims=SimpleNamespace(session_type=session_type),
        seeds={},
    )
    return SimpleNamespace(
        admission=admission,
        supervision=SimpleNamespace(procedure=None),
        session=SimpleNamespace(history=history, on=lambda *_: None),
        variables=SimpleNamespace(values={"wants_callback": True, "tier": "gold"}),
        closed=False,
    )


def test_tool_calls_and_variables_are_published_on_simulated_calls_only() -> None:
    published = call_status.simulation_attribute(_call("simulation"))
    assert published is not None
    assert json.loads(published) == {
        "tool_calls": [{"name": "record_variable", "arguments": {"name": "wants_callback", "value": "true"}}],
        "variables": {"wants_callback": True, "tier": "gold"},
    }
    assert "secret" not in published  # a tool's output never leaves the worker
    for session_type in ("test", "live"):
        call = _call(session_type)
        assert call_status.simulation_attribute(call) is None
        assert call_status.SIMULATION not in call_status.CallStatus(call, SimpleNamespace()).current()


# --- the observation ------------------------------------------------------------------------------------------


async def _record(store: SessionStore, *, team: bool = False) -> SessionRecord:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    sales = next(m for m in CATALOG.teams[FRONT_DESK].members if m.router_name == "sales")
    outcome = SessionOutcome(
        session_id=uuid.uuid4(),
        session_type="simulation",
        agent_id=None if team else SUPPORT,
        team_id=FRONT_DESK if team else None,
        started_at=start,
        ended_at=start + timedelta(seconds=20),
        end_reason="participant_left",
        procedure=ProcedureChoice(name="general_help", reason="router_none"),
        member_changes=(MemberChange(at=start, to_member_id=sales.id),) if team else (),
        transcript=(
            TranscriptItem(role="assistant", text="Hi, how can I help?", created_at=start),
            TranscriptItem(role="user", text="Call me back please", created_at=start),
            TranscriptItem(role="assistant", text="Someone will call you back.", created_at=start),
        ),
        tool_calls=(
            ToolCallRecord(
                name="order_lookup", tool_type="api_call", started_at=start, ended_at=start, duration_ms=5, status="ok"
            ),
        ),
    )
    return await store.complete(outcome)


CALLBACK = Expectations(
    procedure="general_help",
    tools=(ToolExpectation(name="record_variable", arguments={"name": "wants_callback", "value": {"regex": "true"}}),),
    variables={"wants_callback": True},
    said=("(?i)call you back",),
    end_reason="participant_left",
)


async def test_the_record_and_the_attribute_are_what_the_call_did(store: SessionStore) -> None:
    record = await _record(store)
    observed = Observed()
    observe_record(record, call_status.simulation_attribute(_call("simulation")), None, observed)
    assert [line.role for line in observed.transcript] == ["assistant", "user", "assistant"]
    assert (observed.procedure, observed.procedure_reason) == ("general_help", "router_none")
    assert observed.end_reason == "participant_left"
    assert [(c.name, c.arguments) for c in observed.tool_calls] == [
        ("record_variable", {"name": "wants_callback", "value": "true"})
    ]
    assert observed.variables["wants_callback"] is True and not observed.unobservable
    assert all(check.passed for check in evaluate(CALLBACK, observed)), evaluate(CALLBACK, observed)

    team_observed = Observed()
    observe_record(await _record(store, team=True), None, CATALOG.teams[FRONT_DESK], team_observed)
    assert team_observed.handoffs == ["sales"]


async def test_without_the_attribute_tools_and_variables_fail_as_not_checkable(store: SessionStore) -> None:
    observed = Observed()
    observe_record(await _record(store), None, None, observed)
    assert [c.name for c in observed.tool_calls] == ["order_lookup"]  # the record's platform tool runs, shown
    checks = {c.expectation: c for c in evaluate(CALLBACK, observed)}
    for label in (
        "tool record_variable(name = 'wants_callback', value matches /true/) called",
        "variable wants_callback = True",
    ):
        assert not checks[label].passed
        assert checks[label].detail.startswith("not checkable in this run: the agent published no voice_worker.")
    # what the record holds is still checked
    assert checks["procedure general_help"].passed and checks["said /(?i)call you back/"].passed
    # a tool that must not run cannot be vouched for either
    never = evaluate(Expectations(tools=(ToolExpectation(name="end_call", called=False),)), observed)
    assert not never[0].passed and "not checkable" in never[0].detail


# --- the command ----------------------------------------------------------------------------------------------


def test_a_caller_that_cannot_speak_fails_its_scenario_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
    capsys,  # type: ignore[no-untyped-def]  # capsys
) -> None:
    from cli import main as cli_main

    monkeypatch.setenv("VOICE_WORKER_MODE", "dev")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-real")
    monkeypatch.delenv("DEEPGRAM_API_KEY", raising=False)
    scenario = str(EXAMPLE_CATALOG / "scenarios" / "support-refund-request.yaml")
    assert cli_main.main(["simulate", "--mode", "voice", scenario]) == 1
    out = capsys.readouterr().out
    assert "support-refund-request  voice  FAIL" in out
    assert "error: VoiceUnavailable: DEEPGRAM_API_KEY is not set (needed for the caller's deepgram STT)" in out
