"""Admission under bursts (issue 17): the real worker (`create_server`, `DispatchGate`, worker/livekit_adapter.py)
against the LiveKit protocol double, in production mode (the capacity applies), with jobs that hold their slot.

- Simultaneous offers up to WORKER_CALL_CAPACITY are all accepted; above it they are refused at once with
  terminate=False (LiveKit offers them to another worker). Stock livekit-agents took 1 or 2 of them.
- A forged or expired offer is refused with terminate=True and its own reason whatever the load, and never holds
  a slot: after a burst of 200 forged offers the worker is idle and takes the next real call.

The CPU guard is pinned to 0 (the machine running the tests is busy with other things); it is tested on its own.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

import pytest
from livekit.agents import JobExecutorType, JobProcess
from prometheus_client import REGISTRY

from catalog.loader import Catalog, CatalogStore
from contract.dispatch import DispatchRequest, mint_dispatch_metadata
from tests.doubles.held_call import idle_entrypoint
from tests.doubles.livekit_server import AvailabilityAnswer, LiveKitServerDouble, WorkerStatusUpdate
from worker.capacity import CallLoad
from worker.server import DispatchGate, VoiceWorkerServer, create_server
from worker.settings import Settings

SUPPORT = uuid.UUID("5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01")
API_KEY, API_SECRET = "devkey", "burst-test-livekit-secret-0123456789abcdef"
SIGNING_SECRET = "burst-test-dispatch-signing-secret-0123456789"
TIMEOUT = 15.0
# "At once": well inside livekit's 7.5 s wait for an assignment, which is what an accepted offer holds its slot for.
AT_ONCE_S = 2.0


def _no_setup(_proc: JobProcess) -> None:
    """Jobs here only hold a slot (idle_entrypoint): no VAD, catalog or pipelines to load per executor."""


@pytest.fixture
def restore_environ() -> Iterator[None]:
    # AgentServer.run() exports LIVEKIT_URL/API_KEY/API_SECRET into os.environ
    before = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(before)


@pytest.fixture
async def lk() -> AsyncIterator[LiveKitServerDouble]:
    async with LiveKitServerDouble(api_key=API_KEY, api_secret=API_SECRET) as double:
        yield double


class BrokenCatalog(CatalogStore):
    """A catalog that cannot be read (a bad reload, a full disk)."""

    def get(self) -> Catalog:
        raise RuntimeError("catalog unreadable")


@asynccontextmanager
async def running_worker(
    lk: LiveKitServerDouble,
    capacity: int,
    *,
    cpu: Callable[[], float] = lambda: 0.0,
    catalog: type[CatalogStore] = CatalogStore,
) -> AsyncIterator[tuple[VoiceWorkerServer, DispatchGate]]:
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
        WORKER_CALL_CAPACITY=capacity,
        LOAD_THRESHOLD=0.7,
    )
    gate = DispatchGate(settings, catalog(settings.catalog_path))
    worker = create_server(
        settings,
        gate=gate,
        session_entrypoint=idle_entrypoint,
        setup_fnc=_no_setup,
        job_executor_type=JobExecutorType.THREAD,
        num_idle_processes=0,
        load_fnc=CallLoad(settings.call_capacity, cpu_guard=settings.load_threshold, cpu=cpu),
    )
    # production mode: the capacity applies (a dev worker never reports itself full)
    task = asyncio.create_task(worker.run(devmode=False))
    await lk.wait_registered(timeout=TIMEOUT)
    try:
        yield worker, gate
    finally:
        await asyncio.wait_for(worker.aclose(), 30)
        await asyncio.wait_for(task, 30)


def grant(*, secret: str = SIGNING_SECRET, now: float | None = None) -> str:
    request = DispatchRequest(session_id=uuid.uuid4(), session_type="test", agent_id=SUPPORT)
    return mint_dispatch_metadata(request, secret=secret, issuer="voice-worker-door", now=now)


def forged() -> str:
    return grant(secret="someone-elses-secret-0123456789abcdef")


def refusals(reason: str) -> float:
    return REGISTRY.get_sample_value("voice_worker_dispatch_refusals_total", {"reason": reason}) or 0.0


async def offer_burst(lk: LiveKitServerDouble, metadata: list[str]) -> tuple[float, list[AvailabilityAnswer]]:
    sent = time.monotonic()
    answers = await asyncio.gather(*(lk.offer_job(metadata=m, timeout=TIMEOUT) for m in metadata))
    return sent, list(answers)


async def next_status(lk: LiveKitServerDouble, predicate: Callable[[WorkerStatusUpdate], bool]) -> WorkerStatusUpdate:
    seen = len(lk.worker_statuses)
    await lk.wait_for(lambda: any(predicate(s) for s in lk.worker_statuses[seen:]), TIMEOUT)
    return next(s for s in lk.worker_statuses[seen:] if predicate(s))


async def test_a_burst_of_50_offers_against_capacity_30_takes_exactly_30_and_refuses_the_rest_at_once(
    lk: LiveKitServerDouble, restore_environ: None
) -> None:
    at_capacity_before = refusals("at_capacity")
    async with running_worker(lk, capacity=30) as (worker, gate):
        sent, answers = await offer_burst(lk, [grant() for _ in range(50)])

        accepted = [a for a in answers if a.available]
        refused = [a for a in answers if not a.available]
        assert len(accepted) == 30
        assert len(refused) == 20
        # refused for capacity, not for good: LiveKit offers these jobs to another worker
        assert not any(a.terminate for a in refused)
        assert max(a.received_at for a in refused) - sent < AT_ONCE_S
        assert refusals("at_capacity") - at_capacity_before == 20
        assert gate.refusals == {}

        # the accepted offers become 30 running calls; the worker reports itself full and refuses the next offer
        await asyncio.gather(*(lk.assign_job(a.job_id) for a in accepted))
        await asyncio.gather(*(lk.wait_job_status(a.job_id, "JS_RUNNING", timeout=TIMEOUT) for a in accepted))
        assert len(worker.active_jobs) == 30
        full = await next_status(lk, lambda s: s.job_count == 30)
        assert (full.status, full.load) == ("WS_FULL", pytest.approx(1.0))
        extra = await lk.offer_job(metadata=grant(), timeout=TIMEOUT)
        assert not extra.available and not extra.terminate

        # a call ends: a slot is free again
        await lk.terminate_job(accepted[0].job_id)
        await next_status(lk, lambda s: s.job_count == 29 and s.status == "WS_AVAILABLE")
        again = await lk.offer_job(metadata=grant(), timeout=TIMEOUT)
        assert again.available
        await lk.assign_job(again.job_id)


async def test_a_burst_of_200_forged_offers_is_refused_as_bad_signature_and_leaves_the_worker_idle(
    lk: LiveKitServerDouble, restore_environ: None
) -> None:
    at_capacity_before = refusals("at_capacity")
    async with running_worker(lk, capacity=2) as (worker, gate):
        sent, answers = await offer_burst(lk, [forged() for _ in range(200)])

        assert all(not a.available and a.terminate for a in answers)
        assert gate.refusals == {"bad_signature": 200}
        assert refusals("at_capacity") == at_capacity_before
        assert max(a.received_at for a in answers) - sent < AT_ONCE_S
        assert worker.active_jobs == []

        # still idle and available: it reports so, and takes as many real calls as its capacity
        idle = await next_status(lk, lambda s: True)
        assert (idle.status, idle.job_count, idle.load) == ("WS_AVAILABLE", 0, 0.0)
        _, real = await offer_burst(lk, [grant(), grant()])
        assert all(a.available for a in real)
        for answer in real:
            await lk.assign_job(answer.job_id)


async def test_a_forged_or_expired_offer_is_refused_for_its_own_reason_when_the_worker_is_full(
    lk: LiveKitServerDouble, restore_environ: None
) -> None:
    async with running_worker(lk, capacity=1) as (_worker, gate):
        first = await lk.offer_job(metadata=grant(), timeout=TIMEOUT)
        assert first.available
        await lk.assign_job(first.job_id)
        await lk.wait_job_status(first.job_id, "JS_RUNNING", timeout=TIMEOUT)

        bad = await lk.offer_job(metadata=forged(), timeout=TIMEOUT)
        late = await lk.offer_job(metadata=grant(now=time.time() - 3600), timeout=TIMEOUT)
        real = await lk.offer_job(metadata=grant(), timeout=TIMEOUT)

        assert not bad.available and bad.terminate
        assert not late.available and late.terminate
        assert gate.refusals == {"bad_signature": 1, "expired": 1}
        # the full worker refuses a real call for capacity only, so LiveKit tries another worker
        assert not real.available and not real.terminate


async def test_the_cpu_guard_refuses_offers_at_once_when_the_machine_is_busy(
    lk: LiveKitServerDouble, restore_environ: None
) -> None:
    cpu = {"use": 0.69}
    async with running_worker(lk, capacity=30, cpu=lambda: cpu["use"]) as (_worker, gate):
        below = await lk.offer_job(metadata=grant(), timeout=TIMEOUT)
        assert below.available
        await lk.assign_job(below.job_id)
        cpu["use"] = 0.7  # LOAD_THRESHOLD
        above = await lk.offer_job(metadata=grant(), timeout=TIMEOUT)
        assert not above.available and not above.terminate
        # a forged offer is still refused for what it is
        bad = await lk.offer_job(metadata=forged(), timeout=TIMEOUT)
        assert bad.terminate and gate.refusals == {"bad_signature": 1}


async def test_an_offer_is_answered_even_when_the_dispatch_cannot_be_judged(
    lk: LiveKitServerDouble, restore_environ: None
) -> None:
    async with running_worker(lk, capacity=2, catalog=BrokenCatalog) as (worker, _gate):
        answer = await lk.offer_job(metadata=grant(), timeout=TIMEOUT)
        # not for good: another worker (with a readable catalog) may take it
        assert not answer.available and not answer.terminate
        assert worker.active_jobs == []
