"""The call page in a real browser: headless Chromium opens the door's page, calls an agent with a context
variable, speaks through its fake microphone, hears and reads the agent, sees the procedure and latency panels
fill, hangs up; the session record holds the call. Then the page's refusals, each in the words it promises.

The door runs as staff would run it in production (`DOOR_CALL_PAGE=true`, a configured API key typed into the
page); `voice-worker dev`'s own door and page are covered by tests/e2e/test_dev_stack.py.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.e2e import browser
from tests.e2e.conftest import SUPPORT_AGENT, unavailable
from tests.e2e.providers import ProviderDoubles
from tests.e2e.session_records import wait_for_record
from tests.e2e.worker_process import DoorProcess, WorkerEnv, WorkerProcess
from tests.ports import free_port

QUESTION = "I would like a refund for my order please"
# The page's meter is livekit-client's RMS of the float samples (0..1). The doubles' TTS tones measure about
# 0.1-0.2 after Opus; decoded silence stays below 0.005.
AUDIO_LEVEL = 0.02
# The agent greets within this much of the microphone opening (join + a ~5 s greeting at the doubles' TTS pace);
# the caller speaks after it, so the question never barges into the greeting.
GREETING_LEAD_S = 10.0
SCREENSHOTS = "call-page-screenshots"


@pytest.fixture(scope="module")
def chromium_ready() -> None:
    reason = browser.problem()
    if reason is not None:
        unavailable(reason)


@pytest.fixture(scope="module")
def staff_door(world: WorkerEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DoorProcess]:
    process = DoorProcess(world, tmp_path_factory.mktemp("door-page"), DOOR_CALL_PAGE="true")
    yield process
    process.stop()


def _open(page: Any, door: DoorProcess, *, api_key: str | None) -> None:
    page.goto(door.url + "/")
    page.wait_for_selector("#setup:not([hidden])", timeout=15_000)
    assert page.is_hidden("#boot-error")
    if api_key is not None:
        page.fill("#api-key", api_key)


def test_a_call_from_the_page(
    chromium_ready: None,
    worker: WorkerProcess,
    world: WorkerEnv,
    staff_door: DoorProcess,
    doubles: ProviderDoubles,
    speak: Callable[[str], np.ndarray],
    tmp_path: Path,
) -> None:
    name = "Dana" + uuid.uuid4().hex[:6]
    microphone = browser.fake_microphone(tmp_path / "caller.wav", speak(QUESTION), lead_s=GREETING_LEAD_S, tail_s=40)
    doubles.call(lambda: doubles.deepgram.script_transcripts(QUESTION))
    shots = tmp_path / SCREENSHOTS
    shots.mkdir()
    with browser.chromium_page(tmp_path, microphone) as page:
        _open(page, staff_door, api_key=staff_door.api_key)
        page.select_option("#target", f"agent:{SUPPORT_AGENT}")
        # typed inputs from the revision's ContextVarSpecs: string, enum (select), int (number), bool (select)
        assert page.get_attribute("#var-customer_name", "type") == "text"
        assert page.get_attribute("#var-order_count", "type") == "number"
        assert page.locator("#var-tier option").all_inner_texts()[1:] == ["standard", "gold", "platinum"]
        assert page.is_hidden("#readiness") and page.is_enabled("#start")
        page.fill("#var-customer_name", name)
        page.select_option("#var-tier", "gold")
        # keyboard: the form submits with Enter from a field, as a person would
        with page.expect_response(lambda r: r.url.endswith("/v1/voice/web-call")) as minted_response:
            page.focus("#var-customer_name")
            page.keyboard.press("Enter")
        response = minted_response.value
        assert response.status == 200, response.text()
        minted = response.json()

        def until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
            browser.wait_until(page, predicate, timeout_s, what)

        def said(role: str, text: str) -> bool:
            return any(text in line for line in browser.transcript(page, role))

        until(lambda: page.get_attribute("#state", "data-state") == "connected", 15, "the room to connect")
        # once the microphone is published the call panel takes over, with the focus on Hang up
        until(lambda: page.evaluate("document.activeElement.id") == "hangup", 10, "the call panel")
        until(lambda: browser.peak(page, "agent-level") > AUDIO_LEVEL, 15, "the agent's greeting audio")
        until(lambda: said("agent", name), 10, "the greeting in the transcript")
        until(lambda: QUESTION in browser.transcript(page, "caller"), GREETING_LEAD_S + 25, "the caller's question")
        assert browser.peak(page, "caller-level") > AUDIO_LEVEL  # the page heard its own microphone too
        until(lambda: said("agent", "five business days"), 20, "the agent's answer")
        until(lambda: page.get_attribute("#procedure", "data-filled") == "true", 10, "the procedure panel")
        assert page.get_attribute("#procedure", "data-procedure") == "refund_request"
        until(lambda: int(page.get_attribute("#latency", "data-turns") or 0) >= 1, 10, "a turn's latency")
        latency_row = page.locator("#latency tbody tr").last.locator("td").all_inner_texts()
        assert latency_row[0] != "greeting" and 0 < float(latency_row[1]) < 5000, latency_row
        context = page.inner_text("#context")
        assert name in context and "gold" in context
        page.screenshot(path=str(shots / "mid-call.png"), full_page=True)
        page.set_viewport_size({"width": 390, "height": 844})
        page.screenshot(path=str(shots / "mid-call-phone.png"), full_page=True)
        # nothing wider than a phone: the page reflows instead of scrolling sideways
        assert page.evaluate("document.documentElement.scrollWidth") <= 390

        # the meter follows the audio: once the agent is quiet it falls back below the level its speech reached
        until(lambda: page.evaluate("document.getElementById('agent-level').value") < AUDIO_LEVEL, 15, "quiet")

        page.click("#mute")
        assert page.get_attribute("#mute", "aria-pressed") == "true"
        page.click("#hangup")
        until(lambda: page.get_attribute("#state", "data-state") == "disconnected", 10, "the call to end")
        assert page.is_visible("#new-call") and page.is_hidden("#hangup")
        assert minted["session_id"] in page.inner_text("#session")

    record = asyncio.run(wait_for_record(world.database_url, minted["session_id"]))
    roles = [(item.role, item.text) for item in record.transcript]
    assert ("user", QUESTION) in roles
    assert record.procedure is not None and record.procedure.name == "refund_request"
    assert record.end_reason is not None and record.end_reason.value == "participant_left"
    assert record.context_variables and record.context_variables.get("customer_name") == name


def test_keys_pressed_on_the_page_reach_the_agent_as_one_turn(
    chromium_ready: None,
    worker: WorkerProcess,
    world: WorkerEnv,
    staff_door: DoorProcess,
    doubles: ProviderDoubles,
    tmp_path: Path,
) -> None:
    # the example support agent takes keypad digits (dtmf_enabled, up to 10, ended by #); the caller says nothing
    microphone = browser.fake_microphone(tmp_path / "silent.wav", np.zeros(0, np.int16), lead_s=1, tail_s=45)
    name = "Kim" + uuid.uuid4().hex[:6]
    with browser.chromium_page(tmp_path, microphone) as page:
        _open(page, staff_door, api_key=staff_door.api_key)
        page.select_option("#target", f"agent:{SUPPORT_AGENT}")
        page.fill("#var-customer_name", name)
        with page.expect_response(lambda r: r.url.endswith("/v1/voice/web-call")) as minted_response:
            page.click("#start")
        minted = minted_response.value.json()

        def until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
            browser.wait_until(page, predicate, timeout_s, what)

        until(lambda: page.is_visible("#keypad"), 15, "the keypad of a connected call")
        until(lambda: any(name in line for line in browser.transcript(page, "agent")), 20, "the greeting")
        until(lambda: page.evaluate("document.getElementById('agent-level').value") < AUDIO_LEVEL, 15, "quiet")
        asked_before = doubles.call(lambda: len(doubles.openai.chat_requests))

        # a digit typed while the focus is elsewhere (Hang up has it) is no key press
        page.focus("#hangup")
        page.keyboard.press("9")
        page.click('#keypad button[data-digit="4"]')
        page.click('#keypad button[data-digit="7"]')
        # the keyboard, with the keypad focused: digits and # as a person types them
        page.focus("#keypad")
        for key in ("1", "1", "#"):
            page.keyboard.press(key)
        entries = page.locator('#transcript li[data-kind="keypad"]')
        assert entries.count() == 1
        assert entries.locator(".text").inner_text() == "4711#"
        # the # ended the entry, as it ends the worker's
        assert entries.get_attribute("data-role") == "caller" and entries.get_attribute("data-final") == "true"
        page.screenshot(path=str(tmp_path / "keypad.png"), full_page=True)

        def keyed() -> list[str]:
            """Every user message that carried keys, in every chat request since the keys were pressed."""
            users = doubles.call(
                lambda: [
                    m for r in doubles.openai.chat_requests[asked_before:] for m in r.messages if m["role"] == "user"
                ]
            )
            texts = [m["content"] if isinstance(m["content"], str) else json.dumps(m["content"]) for m in users]
            return [t for t in texts if "Keypad" in t]

        until(lambda: bool(keyed()), 10, "the keyed turn at the LLM")
        until(lambda: any("five business days" in t for t in browser.transcript(page, "agent")), 20, "the answer")
        # one turn: every request that carried keys carried the whole entry, never a part of it
        assert set(keyed()) == {"Keypad input: 4711"}, keyed()
        page.click("#hangup")
        until(lambda: page.get_attribute("#state", "data-state") == "disconnected", 10, "the call to end")
        assert page.is_hidden("#keypad")

    record = asyncio.run(wait_for_record(world.database_url, minted["session_id"]))
    keyed_turns = [item.text for item in record.transcript if item.role == "user"]
    assert keyed_turns == ["Keypad input: 4711"], keyed_turns


def test_the_door_refusal_is_shown_in_its_words(
    chromium_ready: None, staff_door: DoorProcess, speak: Callable[[str], np.ndarray], tmp_path: Path
) -> None:
    microphone = browser.fake_microphone(tmp_path / "quiet.wav", speak("hello"), lead_s=1, tail_s=1)
    with browser.chromium_page(tmp_path, microphone) as page:
        _open(page, staff_door, api_key="vwd_not-a-configured-key")
        page.select_option("#target", f"agent:{SUPPORT_AGENT}")
        page.click("#start")
        browser.wait_until(page, lambda: page.is_visible("#error"), 10, "the refusal")
        error = page.inner_text("#error")
        assert "The door refused the call (HTTP 401)" in error, error
        assert page.is_enabled("#start")
        page.fill("#api-key", staff_door.api_key)
        # typed inputs: the browser itself refuses 2.5 for an int (step 1), so nothing is sent
        page.fill("#var-order_count", "2.5")
        page.click("#start")
        assert page.evaluate("document.querySelector('#var-order_count').validity.valid") is False
        assert "HTTP 401" in page.inner_text("#error")
        page.fill("#var-order_count", "")
        # a value only the door can judge (its default bound on strings): its 422 names the variable
        page.fill("#var-customer_name", "x" * 1100)
        page.click("#start")
        browser.wait_until(page, lambda: "HTTP 422" in page.inner_text("#error"), 10, "the validation refusal")
        assert "context_variables.customer_name" in page.inner_text("#error")


def test_no_microphone(chromium_ready: None, staff_door: DoorProcess, tmp_path: Path) -> None:
    with browser.chromium_page(tmp_path, None) as page:
        _open(page, staff_door, api_key=staff_door.api_key)
        page.click("#start")
        browser.wait_until(page, lambda: page.is_visible("#error"), 10, "the microphone error")
        assert "microphone" in page.inner_text("#error").lower()
        assert page.get_attribute("#state", "data-state") == "failed"


def test_livekit_unreachable_and_missing_provider_keys(
    chromium_ready: None,
    world: WorkerEnv,
    speak: Callable[[str], np.ndarray],
    tmp_path: Path,
) -> None:
    dead = f"ws://127.0.0.1:{free_port()}"
    for name in ("keyless", "unreachable"):
        (tmp_path / name).mkdir()
    # empty values count as unset (settings' env_ignore_empty): this door's agents have no provider keys
    keyless = DoorProcess(world, tmp_path / "keyless", DOOR_CALL_PAGE="true", OPENAI_API_KEY="", DEEPGRAM_API_KEY="")
    unreachable = DoorProcess(world, tmp_path / "unreachable", DOOR_CALL_PAGE="true", DOOR_PUBLIC_LIVEKIT_URL=dead)
    microphone = browser.fake_microphone(tmp_path / "quiet.wav", speak("hello"), lead_s=1, tail_s=1)
    try:
        with browser.chromium_page(tmp_path, microphone) as page:
            _open(page, keyless, api_key=keyless.api_key)
            page.select_option("#target", f"agent:{SUPPORT_AGENT}")
            notice = page.inner_text("#readiness")
            assert "DEEPGRAM_API_KEY" in notice and "OPENAI_API_KEY" in notice, notice
            assert page.is_disabled("#start")

            _open(page, unreachable, api_key=unreachable.api_key)
            page.select_option("#target", f"agent:{SUPPORT_AGENT}")
            page.click("#start")
            browser.wait_until(page, lambda: page.is_visible("#error"), 40, "the LiveKit error")
            error = page.inner_text("#error")
            assert f"LiveKit is unreachable at {dead}" in error, error
    finally:
        keyless.stop()
        unreachable.stop()
