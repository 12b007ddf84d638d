"""SIGTERM drains the worker: new offers are refused at once, the active call runs on to its end, the post-call
outbox is flushed, and the process exits 0. One `voice-worker start` process (production mode, JSON logs,
multiprocess metrics) against the LiveKit protocol double and the webhook receiver double.

The worker is tests/doubles/held_call.py: production code throughout except the session entrypoint, which holds a
text-mode call (no SFU here to join a room) until LiveKit ends the job.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from catalog.loader import CatalogStore
from contract.dispatch import DispatchRequest, mint_dispatch_metadata
from contract.settings import EXAMPLE_CATALOG
from records.migrate import upgrade
from records.store import SessionStore
from tests.doubles.livekit_server import LiveKitServerDouble
from tests.doubles.webhook_receiver import WebhookReceiver
from tests.ports import free_port
from worker.server import DispatchGate
from worker.settings import Settings

REPO = Path(__file__).resolve().parent.parent
SUPPORT = uuid.UUID("5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01")
AGENT_NAME = "voice-worker-drain-test"
SECRETS = {
    "LIVEKIT_API_KEY": "APIdrain7Kq2mZx",
    "LIVEKIT_API_SECRET": "lk-drain-secret-9f8e7d6c5b4a39281706f5e4d3c2b1a0",
    "DISPATCH_SIGNING_SECRET": "dispatch-drain-signing-5e4d3c2b1a0f9e8d7c6b5a4938271605",
    "POSTCALL_WEBHOOK_SECRET": "whsec-drain-0a1b2c3d4e5f60718293a4b5c6d7e8f9",
    "OPENAI_API_KEY": "sk-drain-not-real-4c3b2a1908f7e6d5c4b3a291",
    "DEEPGRAM_API_KEY": "dg-drain-not-real-8e7d6c5b4a3928170f6e5d4c",
}
START_TIMEOUT = 60.0
TIMEOUT = 20.0


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log_path: Path
    stderr_path: Path
    metrics_url: str

    def lines(self) -> list[str]:
        """stdout: the log, one JSON record per line."""
        return self.log_path.read_text(errors="replace").splitlines()

    def stderr(self) -> str:
        """The CLI's own start-up lines (catalog summary)."""
        return self.stderr_path.read_text(errors="replace")

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with httpx.AsyncClient(timeout=5.0) as client:
            text = (await client.get(self.metrics_url)).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    async def metric(self, name: str, **labels: str) -> float:
        return (await self.metrics()).get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
async def lk() -> AsyncIterator[LiveKitServerDouble]:
    async with LiveKitServerDouble(
        api_key=SECRETS["LIVEKIT_API_KEY"], api_secret=SECRETS["LIVEKIT_API_SECRET"]
    ) as double:
        yield double


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    hooks = WebhookReceiver(secret=SECRETS["POSTCALL_WEBHOOK_SECRET"])
    await hooks.start()
    yield hooks
    await hooks.stop()


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/records.db"
    upgrade(url)
    return url


@pytest.fixture
def worker(lk: LiveKitServerDouble, receiver: WebhookReceiver, database_url: str, tmp_path: Path) -> Iterator[Worker]:
    metrics_port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PROMETHEUS_", "LIVEKIT_"))},
        **SECRETS,
        "PYTHONPATH": str(REPO),
        "LIVEKIT_URL": lk.url,
        "AGENT_NAME": AGENT_NAME,
        "HEALTH_HOST": "127.0.0.1",
        "HEALTH_PORT": "0",
        "PROMETHEUS_PORT": str(metrics_port),
        "DATABASE_URL": database_url,
        "POSTCALL_WEBHOOK_URL": receiver.url,
        # the job's own attempt fails (see the test); the retry is due almost at once, at the flush
        "OUTBOX_RETRY_BASE_S": "0.01",
        "OUTBOX_RETRY_MAX_S": "0.02",
    }
    log_path, stderr_path = tmp_path / "worker.log", tmp_path / "worker.stderr"
    with log_path.open("wb") as out, stderr_path.open("wb") as err:
        # cwd is a scratch directory: a developer's .env in the repository must not leak in
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.doubles.held_call", "start"], cwd=tmp_path, env=env, stdout=out, stderr=err
        )
    running = Worker(
        proc=proc, log_path=log_path, stderr_path=stderr_path, metrics_url=f"http://127.0.0.1:{metrics_port}/metrics"
    )
    try:
        yield running
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def grant(session_id: uuid.UUID) -> str:
    return mint_dispatch_metadata(
        DispatchRequest(session_id=session_id, session_type="test", agent_id=SUPPORT),
        secret=SECRETS["DISPATCH_SIGNING_SECRET"],
        issuer="voice-worker-door",
    )


async def until(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await condition():
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_sigterm_refuses_offers_lets_the_call_finish_flushes_the_outbox_and_exits_0(
    lk: LiveKitServerDouble, receiver: WebhookReceiver, worker: Worker, database_url: str
):
    await lk.wait_registered(timeout=START_TIMEOUT)
    session_id = uuid.uuid4()
    answer = await lk.offer_job(metadata=grant(session_id), agent_name=AGENT_NAME, timeout=TIMEOUT)
    assert answer.available
    await lk.assign_job(answer.job_id)
    await lk.wait_job_status(answer.job_id, "JS_RUNNING", timeout=TIMEOUT)

    async def call_is_active() -> bool:
        return await worker.metric("voice_worker_active_calls", session_type="test") == 1.0

    # counted in the job process, served by the main process: multiprocess metrics work
    await until(call_is_active, TIMEOUT, "the call to be active")
    # the job's own delivery attempt at the end of the call fails: the webhook must come from the final flush
    receiver.fail_next(1)

    sigterm_at = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    await lk.wait_for(
        lambda: any(s.status == "WS_FULL" and s.received_at > sigterm_at for s in lk.worker_statuses), TIMEOUT
    )
    late = await lk.offer_job(metadata=grant(uuid.uuid4()), agent_name=AGENT_NAME, timeout=TIMEOUT)
    assert not late.available
    assert not late.terminate, "a draining worker must leave the job to another worker"

    # the active call runs on: the process is up, the job still running, the call still counted
    assert worker.proc.poll() is None
    assert "JS_SUCCESS" not in lk.job_status_history(answer.job_id)
    assert await worker.metric("voice_worker_active_calls", session_type="test") == 1.0
    assert await worker.metric("voice_worker_dispatch_refusals_total", reason="draining") == 1.0
    assert receiver.requests == []

    # the call ends (LiveKit ends the job); then the worker finishes on its own
    await lk.terminate_job(answer.job_id)
    code = await asyncio.to_thread(worker.proc.wait, TIMEOUT)
    lines = worker.lines()
    assert code == 0, "\n".join(lines[-40:]) + worker.stderr()

    assert [r.status for r in receiver.requests] == [503, 204]
    assert receiver.accepted[0].idempotency_key == str(session_id)
    assert receiver.accepted[0].json["session_id"] == str(session_id)
    store = SessionStore(database_url)
    try:
        entry = await store.outbox_entry(session_id)
        record = await store.get(session_id)
    finally:
        await store.aclose()
    assert entry is not None and entry.delivered_at is not None and entry.attempts == 2
    assert record is not None and record.end_reason == "server_shutdown"

    for secret in SECRETS.values():
        assert secret not in worker.stderr(), "a secret reached stderr"
    _assert_json_logs_carry_the_call(lines, session_id, answer.job_id)


class _Request:
    """The part of livekit's JobRequest the gate uses."""

    def __init__(self, metadata: str) -> None:
        room = type("Room", (), {"name": "room-1"})()
        self.job = type("Job", (), {"id": "AJ_gate", "metadata": metadata, "room": room})()
        self.answers: list[tuple[str, bool | None]] = []

    async def reject(self, *, terminate: bool = True) -> None:
        self.answers.append(("reject", terminate))

    async def accept(self, **_kwargs: object) -> None:
        self.answers.append(("accept", None))


class _Server:
    draining = False


async def test_the_dispatch_gate_refuses_a_valid_offer_once_the_worker_drains():
    # livekit checks `draining` before it asks the gate; an offer whose check ran just before must not slip in
    settings = Settings(
        _env_file=None,
        VOICE_WORKER_MODE="dev",
        DISPATCH_SIGNING_SECRET=SECRETS["DISPATCH_SIGNING_SECRET"],
        OPENAI_API_KEY="sk-test-not-real",
        DEEPGRAM_API_KEY="dg-test-not-real",
    )
    gate = DispatchGate(settings, CatalogStore(EXAMPLE_CATALOG))
    server = _Server()
    gate.attach(server)  # type: ignore[arg-type]  # _Server: the part of livekit's AgentServer the gate reads
    before = _Request(grant(uuid.uuid4()))
    await gate(before)  # type: ignore[arg-type]  # _Request stands in for livekit's JobRequest
    server.draining = True
    during = _Request(grant(uuid.uuid4()))
    await gate(during)  # type: ignore[arg-type]  # _Request stands in for livekit's JobRequest
    assert before.answers == [("accept", None)]
    assert during.answers == [("reject", False)], "another worker may still take the call"
    assert gate.refusals == {"draining": 1}


def _assert_json_logs_carry_the_call(lines: list[str], session_id: uuid.UUID, job_id: str) -> None:
    records = []
    for line in lines:
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError:
                pytest.fail(f"not a JSON log line: {line!r}")
    for secret in SECRETS.values():
        assert not any(secret in line for line in lines), "a secret reached the log"

    ids = {"session_id": str(session_id), "agent_id": str(SUPPORT), "job_id": job_id}
    started = [r for r in records if r["message"].startswith("call started")]
    assert len(started) == 1
    job_pid = started[0]["pid"]
    # every record of the job process from the call's start to the end of its post-call work
    last = max(i for i, r in enumerate(records) if r["pid"] == job_pid and "webhook" in r["message"])
    first = records.index(started[0])
    of_the_call = [r for r in records[first : last + 1] if r["pid"] == job_pid]
    assert len(of_the_call) >= 3
    for r in of_the_call:
        assert {k: r.get(k) for k in ids} == ids, r
    accepted = [r for r in records if r["message"].startswith("dispatch accepted")]
    assert {k: accepted[0].get(k) for k in ids} == ids
