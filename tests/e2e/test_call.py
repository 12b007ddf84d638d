"""A whole call on the real path: a token (from `voice-worker web-call` or the door over HTTP) → LiveKit creates
the room and dispatches the worker → the caller hears the greeting, asks, hears the answer, hangs up → the
session record holds the call, and post-call runs for live sessions only."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator

import numpy as np
import psutil
import pytest

from records.outcome import SummaryState
from tests.doubles.webhook_receiver import ReceivedRequest
from tests.e2e.caller import SPEECH_RMS, Caller
from tests.e2e.conftest import SUPPORT_AGENT
from tests.e2e.conversation import converse
from tests.e2e.providers import ProviderDoubles
from tests.e2e.session_records import wait_for_record
from tests.e2e.worker_process import DoorProcess, WorkerEnv, WorkerProcess

QUESTION = "I would like a refund for my order please"


@pytest.fixture(scope="module")
def door(world: WorkerEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DoorProcess]:
    process = DoorProcess(world, tmp_path_factory.mktemp("door"))
    yield process
    process.stop()


def _requests_naming(doubles: ProviderDoubles, marker: str) -> list[dict[str, object]]:
    return doubles.call(lambda: [r.body for r in doubles.openai.chat_requests if marker in json.dumps(r.body)])


def test_registered_under_agent_name(worker: WorkerProcess, world: WorkerEnv) -> None:
    registered = [r for r in worker.log_records() if r.get("message") == "registered worker"]
    assert registered and registered[0]["agent_name"] == world.agent_name
    assert worker.ready()


async def test_call_with_cli_token(
    worker: WorkerProcess, world: WorkerEnv, doubles: ProviderDoubles, speak: Callable[[str], np.ndarray]
) -> None:
    name = "Ariadne" + uuid.uuid4().hex[:6]
    minted = world.web_call(
        "--agent-id", SUPPORT_AGENT, "--var", f"customer_name={name}", "--var", "tier=gold", "--session-type", "test"
    )
    caller = Caller(minted["livekit_url"], minted["access_token"])
    await caller.connect()
    try:
        conversation = await converse(caller, doubles, [(QUESTION, speak(QUESTION))])
    finally:
        await caller.hang_up()

    assert conversation.joined_s < 5
    assert conversation.greeting.rms > SPEECH_RMS
    assert conversation.turns[0].voice_to_voice_s < 3

    record = await wait_for_record(world.database_url, minted["session_id"])
    roles = [(item.role, item.text) for item in record.transcript]
    assert ("user", QUESTION) in roles
    assistant = [text for role, text in roles if role == "assistant"]
    assert any(name in text for text in assistant), roles  # the greeting, rendered with the seeded name
    assert any("five business days" in text for text in assistant), roles  # the answer
    assert record.procedure is not None and record.procedure.name == "refund_request"
    latencies = [m.end_of_speech_to_first_audio_ms for m in record.turn_metrics]
    assert any(v is not None and 0 < v < 5000 for v in latencies), record.turn_metrics
    assert record.end_reason is not None and record.end_reason.value == "participant_left"
    # the call's loop was uvloop's, the default (worker/event_loop.py), installed before its job process made it
    started = [r["message"] for r in worker.log_records() if str(r.get("message", "")).startswith("call started")]
    assert started and all(message.endswith(" on uvloop") for message in started), started
    # the call's job process was forked from a forkserver that had imported the call path already (shared pages)
    forkservers = [
        " ".join(child.cmdline())
        for child in psutil.Process(worker.process.pid).children(recursive=True)
        if "multiprocessing.forkserver" in " ".join(child.cmdline())
    ]
    assert forkservers and "'worker.server'" in forkservers[0], forkservers

    # context variables and the session type, from the signed token, reached the agent's instructions
    prompts = _requests_naming(doubles, name)
    assert prompts, "no LLM request carried the seeded customer name"
    system = json.dumps(prompts[-1]["messages"])
    assert "gold tier" in system
    assert "This is a test call" in system


async def test_call_with_door_token_is_a_test_session_without_post_call(
    worker: WorkerProcess,
    world: WorkerEnv,
    door: DoorProcess,
    doubles: ProviderDoubles,
    speak: Callable[[str], np.ndarray],
) -> None:
    name = "Boris" + uuid.uuid4().hex[:6]
    response = door.web_call({"agent_id": SUPPORT_AGENT, "context_variables": {"customer_name": name}})
    assert response.status_code == 200, response.text
    minted = response.json()
    caller = Caller(minted["livekit_url"], minted["access_token"])
    await caller.connect()
    try:
        conversation = await converse(caller, doubles, [(QUESTION, speak(QUESTION))])
    finally:
        await caller.hang_up()
    assert conversation.joined_s < 5 and conversation.turns

    record = await wait_for_record(world.database_url, minted["session_id"])
    assert record.session_type.value == "test"
    assert record.summary_state is SummaryState.SUPPRESSED
    await _wait_webhooks(doubles, minted["session_id"], 1)
    # no summary or memory model call was made for this transcript
    assert not [b for b in _requests_naming(doubles, "Transcript of the call") if name in json.dumps(b)]


async def test_live_session_runs_post_call_and_delivers_once(
    worker: WorkerProcess, world: WorkerEnv, doubles: ProviderDoubles, speak: Callable[[str], np.ndarray]
) -> None:
    name = "Chidi" + uuid.uuid4().hex[:6]
    minted = world.web_call("--agent-id", SUPPORT_AGENT, "--var", f"customer_name={name}", "--session-type", "live")
    caller = Caller(minted["livekit_url"], minted["access_token"])
    await caller.connect()
    try:
        await converse(caller, doubles, [(QUESTION, speak(QUESTION))])
    finally:
        await caller.hang_up()

    deliveries = await _wait_webhooks(doubles, minted["session_id"], 1)
    await asyncio.sleep(3)  # a duplicate would come from a retry or a second worker path: give it time to show
    deliveries = await _wait_webhooks(doubles, minted["session_id"], 1)
    assert len(deliveries) == 1
    delivery = deliveries[0]
    assert delivery.signature_valid
    payload = delivery.json
    body = json.dumps(payload)
    assert "five business days" in body  # the summary the model double wrote
    record = await wait_for_record(world.database_url, minted["session_id"])
    assert record.summary_state is SummaryState.COMPLETED and record.summary and "refund" in record.summary


async def _wait_webhooks(
    doubles: ProviderDoubles, session_id: str, count: int, timeout: float = 30.0
) -> list[ReceivedRequest]:
    deadline = time.monotonic() + timeout
    while True:
        found = doubles.call(
            lambda: [r for r in doubles.webhook.accepted if session_id in r.body.decode(errors="replace")]
        )
        if len(found) >= count or time.monotonic() > deadline:
            if len(found) < count:
                raise AssertionError(f"{len(found)} webhook deliveries for {session_id} after {timeout} s")
            return found
        await asyncio.sleep(0.25)
