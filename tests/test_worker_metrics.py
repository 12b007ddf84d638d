"""The worker's Prometheus metrics, read where an operator reads them: the worker's metrics endpoint.

A simulated call (text in, synthesized audio out, a fallback LLM chain whose first provider fails) goes through
`start_call` and the production post-call path (`after_call`: finish, post-call processing, one webhook attempt),
while the worker (`create_server`) serves /metrics on PROMETHEUS_PORT and refuses a forged dispatch from the LiveKit
protocol double. Counters are global to the test process, so every check compares with a scrape taken before.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from livekit.agents import JobExecutorType, llm
from livekit.agents._exceptions import APIConnectionError
from livekit.agents.testing import fake_job_context
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families

from calls.bootstrap import start_call
from catalog.loader import CatalogStore
from contract.dispatch import DispatchRequest, mint_dispatch_metadata
from contract.settings import EXAMPLE_CATALOG
from postcall.memory import LLMMemoryExtractor
from postcall.outbox import DrainResult, OutboxDelivery
from postcall.processor import PostCallProcessor
from records.migrate import upgrade
from records.store import SessionStore
from telemetry import metrics
from tests.doubles.audio_io import CapturingAudioOutput
from tests.doubles.fake_llm import FakeLLM, Reply
from tests.doubles.fake_speech import FakeTTS
from tests.doubles.livekit_server import LiveKitServerDouble
from tests.doubles.webhook_receiver import WebhookReceiver
from tests.ports import free_port
from worker.outbox_loop import OutboxLoop
from worker.server import after_call, create_server
from worker.services import ProcessServices
from worker.settings import Settings

SUPPORT = uuid.UUID("5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01")
API_KEY, API_SECRET = "devkey", "metrics-test-livekit-secret-0123456789abcdef"
SIGNING_SECRET = "metrics-test-dispatch-signing-secret-0123456789"
WEBHOOK_SECRET = "metrics-test-webhook-secret"
TIMEOUT = 10.0

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def call_llm(chat_ctx: llm.ChatContext, tools: list[Any]) -> Reply:
    if tools and getattr(tools[0], "id", None) == "choose_procedure":
        return Reply(tool_calls=[("choose_procedure", {"name": "refund_request"})])
    return Reply(text="Happy to help with that.")


class TextPipeline:
    """What start_call gets from pipelines.builder for this text call: a fallback LLM chain and a TTS."""

    def __init__(self) -> None:
        self.stt = None
        self.llm = llm.FallbackAdapter(
            [FakeLLM(lambda _ctx, _tools: Reply(error=APIConnectionError("provider down"))), FakeLLM(call_llm)],
            max_retry_per_llm=0,
            retry_interval=0.01,
        )
        self.tts = FakeTTS(ttfb_s=0.02, realtime_factor=None)

    def session_kwargs(self) -> dict[str, Any]:
        return {"llm": self.llm, "tts": self.tts}

    async def aclose(self) -> None:
        await self.llm.aclose()


@pytest.fixture
def restore_environ() -> Iterator[None]:
    # AgentServer.run() exports LIVEKIT_URL/API_KEY/API_SECRET into os.environ
    before = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(before)


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    hooks = WebhookReceiver(secret=WEBHOOK_SECRET)
    await hooks.start()
    yield hooks
    await hooks.stop()


@pytest.fixture
def settings(tmp_path: Path, receiver: WebhookReceiver) -> Settings:
    url = f"sqlite:///{tmp_path}/records.db"
    upgrade(url)
    return Settings(
        _env_file=None,
        VOICE_WORKER_MODE="dev",
        LIVEKIT_API_KEY=API_KEY,
        LIVEKIT_API_SECRET=API_SECRET,
        DISPATCH_SIGNING_SECRET=SIGNING_SECRET,
        OPENAI_API_KEY="sk-test-not-real",
        DEEPGRAM_API_KEY="dg-test-not-real",
        HEALTH_HOST="127.0.0.1",
        HEALTH_PORT=0,
        PROMETHEUS_PORT=free_port(),
        DATABASE_URL=url,
        POSTCALL_WEBHOOK_URL=receiver.url,
        POSTCALL_WEBHOOK_SECRET=WEBHOOK_SECRET,
        OUTBOX_RETRY_BASE_S=0.01,
        OUTBOX_RETRY_MAX_S=0.02,
    )


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[SessionStore]:
    records = SessionStore(settings.database_url)
    yield records
    await records.aclose()


@pytest.fixture
async def services(settings: Settings, store: SessionStore) -> AsyncIterator[ProcessServices]:
    """build_process_services, with the text pipeline above instead of provider clients."""
    no_model = lambda _outcome: None  # noqa: E731 - test sessions run no post-call model anyway
    delivery = OutboxDelivery.from_settings(store, settings, on_attempt=metrics.webhook_attempt)
    assert delivery is not None
    yield ProcessServices(
        settings=settings,
        catalog=CatalogStore(EXAMPLE_CATALOG),
        session_kwargs=lambda _config: TextPipeline(),
        store=store,
        postcall=PostCallProcessor(
            store, settings, no_model, LLMMemoryExtractor(no_model), on_enqueued=delivery.notify
        ),
        delivery=delivery,
    )
    await delivery.aclose()


def grant(session_id: uuid.UUID, *, secret: str = SIGNING_SECRET) -> str:
    return mint_dispatch_metadata(
        DispatchRequest(session_id=session_id, session_type="test", agent_id=SUPPORT),
        secret=secret,
        issuer="voice-worker-door",
    )


async def simulated_call(services: ProcessServices, session_id: uuid.UUID, utterance: str) -> None:
    def speak_out(session: Any) -> None:
        session.output.audio = CapturingAudioOutput(playback_speed=50.0)

    with fake_job_context(job_metadata=grant(session_id)) as ctx:
        call = await start_call(ctx, services, room=None, before_start=speak_out)
        await call.session.run(user_input=utterance)
        call.state.end("participant_left")
        await after_call(call, services)


async def test_a_simulated_call_is_counted_on_the_worker_metrics_endpoint(
    settings: Settings, services: ProcessServices, receiver: WebhookReceiver, restore_environ: None
):
    lk = LiveKitServerDouble(api_key=API_KEY, api_secret=API_SECRET)
    async with lk, httpx.AsyncClient(timeout=5.0) as http:
        server = create_server(
            settings.model_copy(update={"livekit_url": lk.url}),
            job_executor_type=JobExecutorType.THREAD,
            num_idle_processes=0,
        )
        task = asyncio.create_task(server.run(devmode=True))
        try:
            await lk.wait_registered(timeout=TIMEOUT)
            endpoint = f"http://127.0.0.1:{settings.prometheus_port}/metrics"

            async def scrape() -> Samples:
                return parse((await http.get(endpoint)).text)

            before = await scrape()
            refused = await lk.offer_job(
                metadata=grant(uuid.uuid4(), secret="someone-elses-secret-0123456789abcdef"), timeout=TIMEOUT
            )
            assert not refused.available
            await simulated_call(services, uuid.uuid4(), "I want to return my blender, it arrived broken")
            after = await scrape()
        finally:
            await asyncio.wait_for(server.aclose(), TIMEOUT)
            await asyncio.wait_for(task, TIMEOUT)

    # the call: counted once by session type and end reason, and no longer active
    assert delta(after, before, "voice_worker_calls_total", session_type="test", end_reason="participant_left") == 1
    assert value(after, "voice_worker_active_calls", session_type="test") == value(
        before, "voice_worker_active_calls", session_type="test"
    )
    # its turns: LLM time to first token and TTS time to first byte were observed
    assert delta(after, before, "voice_worker_turn_llm_ttft_seconds_count") >= 1
    assert delta(after, before, "voice_worker_turn_tts_ttfb_seconds_count") >= 1
    assert delta(after, before, "voice_worker_turn_tts_ttfb_seconds_sum") >= 0.02
    # the procedure router's choice and latency
    assert delta(after, before, "voice_worker_procedure_selections_total", reason="router") == 1
    assert delta(after, before, "voice_worker_router_latency_seconds_count") == 1
    # the first LLM of the chain failed: one fallback
    assert delta(after, before, "voice_worker_provider_fallbacks_total", kind="llm", provider="fake") == 1
    # the refused dispatch, by reason
    assert delta(after, before, "voice_worker_dispatch_refusals_total", reason="bad_signature") == 1
    # post-call: recorded and delivered
    assert delta(after, before, "voice_worker_postcall_processed_total", result="ok") == 1
    assert delta(after, before, "voice_worker_postcall_webhook_delivered_total") == 1
    assert len(receiver.accepted) == 1


async def test_end_of_speech_to_first_audio_is_read_from_the_reply_metrics():
    # A text call has no end of speech; livekit puts the figure on the reply's ChatMessage.metrics in voice calls.
    before = scrape_registry()
    metrics.observe_turn({"e2e_latency": 0.8, "llm_node_ttft": 0.3, "tts_node_ttfb": 0.2, "llm_node_tps": 90.0})
    after = scrape_registry()
    name = "voice_worker_turn_end_of_speech_to_first_audio_seconds"
    assert delta(after, before, f"{name}_count") == 1
    assert delta(after, before, f"{name}_bucket", le="0.75") == 0
    assert delta(after, before, f"{name}_bucket", le="1.0") == 1


async def test_webhook_failures_retries_and_the_backlog_are_counted(
    settings: Settings, services: ProcessServices, store: SessionStore, receiver: WebhookReceiver
):
    # A minute of backoff after the failed attempt: the entry stays queued while the backlog is read.
    slow = settings.model_copy(update={"outbox_retry_base_s": 60.0, "outbox_retry_max_s": 60.0})
    delivery = OutboxDelivery.from_settings(store, slow, on_attempt=metrics.webhook_attempt)
    assert delivery is not None
    before = scrape_registry()
    receiver.fail_next(1)
    await simulated_call(dataclasses.replace(services, delivery=delivery), uuid.uuid4(), "hello")
    await delivery.aclose()
    assert [r.status for r in receiver.requests] == [503]

    # the main process's loop reports the backlog; its flush at exit leaves an entry that is not due queued
    assert await run_outbox_loop(slow, expected_backlog=1) == 1

    # two minutes later the retry is due and acknowledged
    later = SessionStore(settings.database_url, clock=lambda: datetime.now(UTC) + timedelta(minutes=2))
    retry = OutboxDelivery.from_settings(later, settings, on_attempt=metrics.webhook_attempt)
    assert retry is not None
    try:
        assert await retry.drain_once() == DrainResult(attempted=1, delivered=1)
    finally:
        await retry.aclose()
        await later.aclose()
    assert await run_outbox_loop(settings, expected_backlog=0) == 0

    after = scrape_registry()
    assert [r.status for r in receiver.requests] == [503, 204]
    assert delta(after, before, "voice_worker_postcall_webhook_failures_total") == 1
    assert delta(after, before, "voice_worker_postcall_webhook_retries_total") == 1
    assert delta(after, before, "voice_worker_postcall_webhook_delivered_total") == 1
    assert value(after, "voice_worker_postcall_outbox_backlog") == 0


def scrape_registry() -> Samples:
    """What the worker's endpoint serves outside multiprocess mode: this process's default registry."""
    return parse(generate_latest(REGISTRY).decode())


async def run_outbox_loop(settings: Settings, *, expected_backlog: int) -> int | None:
    """Start the main-process outbox loop, wait until it reports the backlog, stop and flush it."""
    loop = OutboxLoop(settings, backlog_interval_s=0.02)
    loop.start()
    try:
        async with asyncio.timeout(TIMEOUT):
            while value(scrape_registry(), "voice_worker_postcall_outbox_backlog") != expected_backlog:
                await asyncio.sleep(0.02)
    finally:
        remaining = await loop.stop_and_flush()
    return remaining


def test_an_ended_job_process_is_folded_into_the_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Multiprocess mode, with the files job processes leave (written the way prometheus_client writes them): a
    scrape folds the files of a process that has ended (its live gauge goes, its counters and histograms move into
    one archive file and keep counting) and leaves a running one's alone; the endpoint's folding between scrapes
    does the same."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    labels = ["session_type", "end_reason"], ["live", "participant_left"]
    calls = mmap_key("voice_worker_calls", "voice_worker_calls_total", *labels, "Calls")
    active = mmap_key("voice_worker_active_calls", "voice_worker_active_calls", ["session_type"], ["live"], "Calls")

    def job_process(pid: int) -> None:
        for name, key, amount in ((f"counter_{pid}.db", calls, 1.0), (f"gauge_livesum_{pid}.db", active, 1.0)):
            values = MmapedDict(str(tmp_path / name))
            values.write_value(key, amount, 0.0)
            values.close()

    running = subprocess.Popen(["sleep", "60"])
    ended = [subprocess.Popen(["true"]) for _ in range(2)]
    try:
        for process in ended:
            process.wait()
            job_process(process.pid)
        job_process(running.pid)

        samples = parse(metrics.exposition().decode())
        assert value(samples, "voice_worker_calls_total", session_type="live", end_reason="participant_left") == 3
        assert value(samples, "voice_worker_active_calls", session_type="live") == 1
        left = sorted(p.name for p in tmp_path.iterdir())
        assert left == sorted([f"counter_{running.pid}.db", "counter_archive.db", f"gauge_livesum_{running.pid}.db"])
    finally:
        running.kill()
        running.wait()

    metrics.fold_ended_processes()
    samples = parse(metrics.exposition().decode())
    assert value(samples, "voice_worker_calls_total", session_type="live", end_reason="participant_left") == 3
    assert value(samples, "voice_worker_active_calls", session_type="live") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter_archive.db"]
