"""Ten people press "call" in the same second: every one of them gets an agent from one worker (issue: a burst of
simultaneous offers used to be refused past 2, leaving callers in empty rooms). The worker's admission counts
accepted-but-not-started calls against its capacity (worker/capacity.py), so a burst under capacity is taken."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from tests.e2e.caller import Caller
from tests.e2e.conftest import SUPPORT_AGENT
from tests.e2e.test_refusals import _agents_in
from tests.e2e.worker_process import DoorProcess, WorkerEnv, WorkerProcess

CALLERS = 10
ALL_JOINED_WITHIN_S = 20.0


@pytest.fixture(scope="module")
def worker(world: WorkerEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    # The thread executor, as deploy/k8s runs the worker: a call is a thread sharing the worker's models. With the
    # process executor each call past the two warm processes first starts one (imports, VAD model, catalog: about
    # a second of CPU each), which on this 2-core machine, shared with the server and ten callers, is what a
    # burst would measure instead of admission.
    process = WorkerProcess.started(
        world, tmp_path_factory.mktemp("burst-worker") / "worker.log", JOB_EXECUTOR="thread"
    )
    yield process
    process.stop()


@pytest.fixture(scope="module")
def door(world: WorkerEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DoorProcess]:
    process = DoorProcess(world, tmp_path_factory.mktemp("burst-door"))
    yield process
    process.stop()


async def test_ten_simultaneous_callers_all_get_an_agent(
    worker: WorkerProcess, world: WorkerEnv, door: DoorProcess
) -> None:
    responses = [door.web_call({"agent_id": SUPPORT_AGENT}) for _ in range(CALLERS)]
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    minted = [r.json() for r in responses]
    callers = [Caller(m["livekit_url"], m["access_token"]) for m in minted]
    start = time.monotonic()
    try:
        await asyncio.gather(*(c.connect() for c in callers))
        joined = await asyncio.gather(*(c.wait_agent(timeout=ALL_JOINED_WITHIN_S) for c in callers))
        elapsed = time.monotonic() - start
        for m in minted:
            assert len(await _agents_in(world, m["room_name"])) == 1
    finally:
        await asyncio.gather(*(c.hang_up() for c in callers), return_exceptions=True)
    refusals = [r for r in worker.log_records() if "dispatch refused" in str(r.get("message", ""))]
    accepted = [r for r in worker.log_records() if str(r.get("message", "")).startswith("dispatch accepted")]
    assert refusals == []
    assert len(accepted) == CALLERS
    # every call's thread made its loop from the policy the worker installed at start (worker/event_loop.py)
    started = [r["message"] for r in worker.log_records() if str(r.get("message", "")).startswith("call started")]
    assert started and all(message.endswith(" on uvloop") for message in started), started
    print(f"{CALLERS} simultaneous callers: all agents joined within {elapsed:.1f} s (slowest {max(joined):.1f} s)")
