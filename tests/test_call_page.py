"""The call page's server side without a browser: when the door serves it, what its config tells the page (targets,
typed variables, the key to use, what would stop a call), the files it may serve; the worker's call status
attributes; and how `voice-worker dev` hands its options to the stack. The browser itself: tests/e2e/."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from livekit.agents import llm

from calls import status as call_status
from catalog.loader import load_catalog
from cli import main as cli
from cli.devstack import DevStack, StackOptions
from contract.settings import EXAMPLE_CATALOG
from door import call_page
from door.app import create_app
from door.keys import DEV_API_KEY
from door.settings import DoorSettings
from procedures.supervisor import ProcedureDecision, Supervision
from tests.doubles.door_sessions import RecordingSessionCreator
from tests.doubles.door_world import FakeClock, make_settings
from worker.settings import Settings

SUPPORT = uuid.UUID("5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01")


async def _client(settings: Settings) -> httpx.AsyncClient:
    app = create_app(settings, session_creator=RecordingSessionCreator(), clock=FakeClock())
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://door.test")


@pytest.fixture
async def staff_door(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with await _client(make_settings(tmp_path, DOOR_CALL_PAGE=True, CATALOG_PATH=EXAMPLE_CATALOG)) as client:
        yield client


async def test_production_serves_no_page_unless_asked(tmp_path: Path) -> None:
    async with await _client(make_settings(tmp_path)) as client:
        assert (await client.get("/")).status_code == 404
        assert (await client.get(call_page.CONFIG_PATH)).status_code == 404
        assert (await client.get("/static/call-page.css")).status_code == 404


async def test_the_page_is_served_with_a_strict_policy(staff_door: httpx.AsyncClient) -> None:
    page = await staff_door.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/call-page.js"' in page.text and "boot-error" in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy and "http" not in policy
    css = await staff_door.get("/static/call-page.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    for name in ("app.py", "..%2Fapp.py", "call-page.html", "nothing.js"):
        assert (await staff_door.get(f"/static/{name}")).status_code == 404, name


async def test_production_config_offers_no_key_and_the_typed_variables(staff_door: httpx.AsyncClient) -> None:
    config = (await staff_door.get(call_page.CONFIG_PATH)).json()
    assert config["api_key"] is None and config["mode"] == "production"
    assert config["web_call_path"] == "/v1/voice/web-call"
    support = next(a for a in config["agents"] if a["id"] == str(SUPPORT))
    variables = {v["name"]: v for v in support["context_variables"]}
    # system variables are the worker's to set: never offered
    assert set(variables) == {"customer_name", "tier", "order_count", "wants_callback", "order_status"}
    assert variables["tier"]["type"] == "enum" and variables["tier"]["enum_values"] == ["standard", "gold", "platinum"]
    assert variables["order_count"]["type"] == "int" and variables["order_count"]["default"] == 0
    assert variables["wants_callback"]["type"] == "bool"
    assert [t["name"] for t in config["teams"]] == ["Acme Front Desk"]
    assert "secret" not in json.dumps(config).lower()


async def test_the_config_offers_the_keypad_where_the_pipeline_takes_digits(staff_door: httpx.AsyncClient) -> None:
    config = (await staff_door.get(call_page.CONFIG_PATH)).json()
    keypads = {t["name"]: (t["dtmf_enabled"], t["dtmf_entry"]) for t in config["agents"] + config["teams"]}
    # support takes order numbers on the keypad (10 digits, or ended by #); the others take no digits
    assert keypads == {
        "Acme Support": (True, {"termination_digit": "#", "max_digits": 10, "inter_digit_timeout_ms": 3000}),
        "Acme Sales": (False, None),
        "Acme Front Desk": (False, None),
    }
    catalog = load_catalog(EXAMPLE_CATALOG)
    pipeline = catalog.agents[SUPPORT].active_revision.pipeline.model_copy(
        update={"dtmf_termination_digit": "", "dtmf_max_digits": 4, "dtmf_inter_digit_timeout_ms": 800}
    )
    assert call_page.keypad(pipeline)["dtmf_entry"] == {
        "termination_digit": "",
        "max_digits": 4,
        "inter_digit_timeout_ms": 800,
    }
    page = (await staff_door.get("/")).text
    # a phone's twelve keys, in a phone's order
    assert re.findall(r'data-digit="(.)"', page) == list("123456789*0#")


async def test_dev_config_hands_over_the_public_dev_key_only_without_a_keys_file(tmp_path: Path) -> None:
    dev = make_settings(tmp_path, VOICE_WORKER_MODE="dev", DOOR_API_KEYS_FILE=None)
    async with await _client(dev) as client:
        assert (await client.get(call_page.CONFIG_PATH)).json()["api_key"] == DEV_API_KEY
    dev_with_keys = make_settings(tmp_path, VOICE_WORKER_MODE="dev")
    async with await _client(dev_with_keys) as client:
        assert (await client.get(call_page.CONFIG_PATH)).json()["api_key"] is None


def test_missing_provider_keys_are_named_before_a_call(tmp_path: Path) -> None:
    pipeline = load_catalog(EXAMPLE_CATALOG).agents[SUPPORT].active_revision.pipeline
    without = make_settings(tmp_path, OPENAI_API_KEY=None, DEEPGRAM_API_KEY=None)
    assert call_page.readiness(pipeline, without) == {
        "missing_keys": ["DEEPGRAM_API_KEY", "OPENAI_API_KEY"],
        "problems": [],
    }
    only_openai = make_settings(tmp_path, OPENAI_API_KEY="sk-test-not-real", DEEPGRAM_API_KEY=None)
    assert call_page.readiness(pipeline, only_openai)["missing_keys"] == ["DEEPGRAM_API_KEY"]
    both = make_settings(tmp_path, OPENAI_API_KEY="sk-test-not-real", DEEPGRAM_API_KEY="dg-test-not-real")
    assert call_page.readiness(pipeline, both) == {"missing_keys": [], "problems": []}


# --- the worker's call status attributes ----------------------------------------------------------------


class Participant:
    def __init__(self, fail: bool = False) -> None:
        self.updates: list[dict[str, str]] = []
        self.fail = fail

    async def set_attributes(self, attributes: dict[str, str]) -> None:
        if self.fail:
            raise RuntimeError("room closed")
        self.updates.append(dict(attributes))


def _call() -> Any:
    catalog = load_catalog(EXAMPLE_CATALOG)
    agent = catalog.agents[SUPPORT]
    admission = SimpleNamespace(
        agent=agent,
        revision=agent.active_revision,
        team=None,
        claims=SimpleNamespace(session_type="test"),
        seeds={"customer_name": "Dana", "tier": "gold"},
    )
    session = SimpleNamespace(history=llm.ChatContext(), on=lambda *_: None)
    return SimpleNamespace(admission=admission, supervision=Supervision(), session=session, closed=False)


async def test_call_status_publishes_what_changed() -> None:
    call, participant = _call(), Participant()
    status = call_status.CallStatus(call, participant)
    await status.update()
    assert list(participant.updates[0]) == [call_status.CALL]
    published = json.loads(participant.updates[0][call_status.CALL])
    assert published["agent"] == "Acme Support" and published["context_variables"]["tier"] == "gold"
    await status.update()
    assert len(participant.updates) == 1  # nothing changed, nothing sent

    refund = next(p for p in call.admission.revision.procedures if p.name == "refund_request")
    call.supervision.decisions.append(ProcedureDecision(refund, "router", 123.45, datetime.now(UTC)))
    call.session.history.add_message(role="assistant", content="Hi Dana")
    reply = call.session.history.add_message(role="assistant", content="Refunds take five business days.")
    reply.metrics = {"e2e_latency": 0.512, "llm_node_ttft": 0.3, "tts_node_ttfb": 0.1}
    await status.update()
    assert set(participant.updates[1]) == {call_status.PROCEDURE, call_status.TURNS}
    assert json.loads(participant.updates[1][call_status.PROCEDURE]) == {
        "name": "refund_request",
        "reason": "router",
        "router_latency_ms": 123.5,
    }
    turns = json.loads(participant.updates[1][call_status.TURNS])
    assert turns == [{"turn": 1, "end_of_speech_to_first_audio_ms": 512.0, "llm_ttft_ms": 300.0, "tts_ttfb_ms": 100.0}]


async def test_call_status_survives_a_closed_room() -> None:
    participant = Participant(fail=True)
    status = call_status.CallStatus(_call(), participant)
    await asyncio.wait_for(status.update(), 1)
    participant.fail = False
    await status.update()  # not marked as published before: sent again once the room takes it
    assert list(participant.updates[0]) == [call_status.CALL]


# --- voice-worker dev -----------------------------------------------------------------------------------


def test_dev_runs_the_stack_with_its_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    from cli import devstack

    seen: list[tuple[Settings, DoorSettings, StackOptions]] = []
    monkeypatch.setattr(devstack, "run_dev_stack", lambda s, d, o: seen.append((s, d, o)) or 0)
    # `--livekit-url` is exported for the stack's children; monkeypatch puts the variable back afterwards
    monkeypatch.setenv("LIVEKIT_URL", "ws://localhost:7880")
    argv = ["dev", "--livekit-url", "ws://127.0.0.1:7999", "--door-port", "8111", "--node-ip", "127.0.0.9"]
    assert cli.main(argv) == 0
    settings, door_settings, options = seen[0]
    assert door_settings.is_dev
    assert settings.is_dev and settings.livekit_url == "ws://127.0.0.1:7999"
    assert (options.door_port, options.node_ip) == (8111, "127.0.0.9")


def test_the_dev_door_binds_loopback_unless_given_an_address(tmp_path: Path) -> None:
    wildcard = make_settings(tmp_path, VOICE_WORKER_MODE="dev", DOOR_HOST="0.0.0.0")
    assert DevStack(Settings(), wildcard, StackOptions()).door_host == "127.0.0.1"
    chosen = make_settings(tmp_path, VOICE_WORKER_MODE="dev", DOOR_HOST="127.0.0.2", DOOR_PORT=8123)
    stack = DevStack(Settings(), chosen, StackOptions())
    assert stack.door_host == "127.0.0.2" and stack.door_url() == "http://127.0.0.2:8123"
    assert DevStack(Settings(), chosen, StackOptions(door_port=8124)).door_url() == "http://127.0.0.2:8124"
