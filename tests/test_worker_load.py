"""The load the worker reports tracks its calls: the real AgentServer (load function from worker/capacity.py,
production load threshold) against the LiveKit protocol double, with jobs that occupy their slot until ended.

The CPU half of the load is pinned to 0 here, so the test sees the call count alone (the machine running the
tests is busy with other things); `blended_load` is checked on its own.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from livekit.agents import JobExecutorType
from prometheus_client import REGISTRY

import worker.services  # noqa: F401 - plugins register on the main thread; thread-executor jobs import it later
from contract.dispatch import DispatchRequest, mint_dispatch_metadata
from tests.doubles.held_call import idle_entrypoint
from tests.doubles.livekit_server import LiveKitServerDouble, WorkerStatusUpdate
from worker.capacity import CallLoad, blended_load
from worker.server import VoiceWorkerServer, create_server
from worker.settings import Settings, get_settings

SUPPORT = uuid.UUID("5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01")
API_KEY, API_SECRET = "devkey", "load-test-livekit-secret-0123456789abcdef"
SIGNING_SECRET = "load-test-dispatch-signing-secret-0123456789"
# status updates come every 2.5 s
TIMEOUT = 10.0


def test_load_is_the_larger_of_call_share_and_cpu():
    assert blended_load(0, 25, 0.0) == 0.0
    assert blended_load(5, 25, 0.1) == pytest.approx(0.2)
    assert blended_load(5, 25, 0.9) == pytest.approx(0.9)
    assert blended_load(30, 25, 0.1) == 1.0
    with pytest.raises(ValueError):
        blended_load(1, 0, 0.0)


def test_cpu_guard_off_leaves_the_call_count_alone_to_decide(monkeypatch: pytest.MonkeyPatch):
    # a machine pegged by other programs (the real-server tests: livekit-server and callers beside the worker)
    monkeypatch.setattr("worker.capacity._PROCESS_CPU", lambda: 1.0)
    guarded = CallLoad.from_settings(Settings(WORKER_CALL_CAPACITY=10))
    unguarded = CallLoad.from_settings(Settings(WORKER_CALL_CAPACITY=10, WORKER_CPU_GUARD=False))
    assert not guarded.has_room(active=0, reserved=0)
    assert unguarded.has_room(active=0, reserved=0)
    assert unguarded.effective(active=5, reserved=0) == pytest.approx(0.5)
    assert not unguarded.has_room(active=9, reserved=1)


@pytest.fixture
def restore_environ() -> Iterator[None]:
    # AgentServer.run() exports LIVEKIT_URL/API_KEY/API_SECRET into os.environ
    before = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(before)


@pytest.fixture
def job_process_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    # thread-executor jobs run setup_process here, which reads the settings from the environment
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/records.db")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
async def lk() -> AsyncIterator[LiveKitServerDouble]:
    async with LiveKitServerDouble(api_key=API_KEY, api_secret=API_SECRET) as double:
        yield double


@pytest.fixture
async def server(
    lk: LiveKitServerDouble, job_process_env: None, restore_environ: None
) -> AsyncIterator[VoiceWorkerServer]:
    settings = Settings(
        _env_file=None,
        VOICE_WORKER_MODE="dev",
        LIVEKIT_URL=lk.url,
        LIVEKIT_API_KEY=API_KEY,
        LIVEKIT_API_SECRET=API_SECRET,
        DISPATCH_SIGNING_SECRET=SIGNING_SECRET,
        OPENAI_API_KEY="sk-test-not-real",
        DEEPGRAM_API_KEY="dg-test-not-real",
        HEALTH_HOST="127.0.0.1",
        HEALTH_PORT=0,
        WORKER_CALL_CAPACITY=2,
        LOAD_THRESHOLD=0.7,
    )
    worker = create_server(
        settings,
        session_entrypoint=idle_entrypoint,
        job_executor_type=JobExecutorType.THREAD,
        num_idle_processes=0,
        load_fnc=CallLoad(settings.call_capacity, cpu=lambda: 0.0),
    )
    # production mode: the load threshold applies (a dev worker never reports itself full)
    task = asyncio.create_task(worker.run(devmode=False))
    await lk.wait_registered(timeout=TIMEOUT)
    try:
        yield worker
    finally:
        await asyncio.wait_for(worker.aclose(), TIMEOUT)
        await asyncio.wait_for(task, TIMEOUT)


def grant() -> str:
    return mint_dispatch_metadata(
        DispatchRequest(session_id=uuid.uuid4(), session_type="test", agent_id=SUPPORT),
        secret=SIGNING_SECRET,
        issuer="voice-worker-door",
    )


async def status_with(lk: LiveKitServerDouble, jobs: int) -> WorkerStatusUpdate:
    seen = len(lk.worker_statuses)
    await lk.wait_for(lambda: any(s.job_count == jobs for s in lk.worker_statuses[seen:]), TIMEOUT)
    return next(s for s in lk.worker_statuses[seen:] if s.job_count == jobs)


async def start_job(lk: LiveKitServerDouble) -> str:
    answer = await lk.offer_job(metadata=grant(), timeout=TIMEOUT)
    assert answer.available
    await lk.assign_job(answer.job_id)
    await lk.wait_job_status(answer.job_id, "JS_RUNNING", timeout=TIMEOUT)
    return answer.job_id


def at_capacity_refusals() -> float:
    return REGISTRY.get_sample_value("voice_worker_dispatch_refusals_total", {"reason": "at_capacity"}) or 0.0


async def test_load_rises_with_calls_and_the_worker_reports_full_above_the_threshold(
    lk: LiveKitServerDouble, server: VoiceWorkerServer
):
    first = await start_job(lk)
    one = await status_with(lk, 1)
    assert (one.status, one.load) == ("WS_AVAILABLE", pytest.approx(0.5))

    await start_job(lk)
    two = await status_with(lk, 2)
    assert (two.status, two.load) == ("WS_FULL", pytest.approx(1.0))

    # at the threshold livekit refuses the offer itself, before the dispatch gate; counted by reason
    refusals = at_capacity_refusals()
    third = await lk.offer_job(metadata=grant(), timeout=TIMEOUT)
    assert not third.available and not third.terminate
    assert at_capacity_refusals() == refusals + 1

    # a call ends: the worker takes calls again
    await lk.terminate_job(first)
    again = await status_with(lk, 1)
    assert (again.status, again.load) == ("WS_AVAILABLE", pytest.approx(0.5))


@pytest.mark.parametrize("executor", ["process", "thread"])
def test_the_executor_setting_and_its_capacity_reach_livekit(executor: str):
    settings = Settings(
        _env_file=None, VOICE_WORKER_MODE="dev", JOB_EXECUTOR=executor, HEALTH_HOST="127.0.0.1", HEALTH_PORT=0
    )
    server = create_server(settings)
    assert server._job_executor_type is JobExecutorType(executor)
    assert isinstance(server.load_fnc, CallLoad) and server.load_fnc.capacity == settings.call_capacity
