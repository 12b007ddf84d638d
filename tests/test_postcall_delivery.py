"""Webhook delivery that a slow or absent receiver cannot break (issue 17), on SQLite and PostgreSQL.

- A receiver slower than OUTBOX_REQUEST_TIMEOUT_S gets the record once per attempt, at most OUTBOX_MAX_ATTEMPTS
  times, always with the same Idempotency-Key; the docs' sample receiver processes it once.
- A receiver that is always down: the entry is parked after the limit (metric, log line), and
  `voice-worker outbox list|show|resend` finds it and sends it again.
- The lease is renewed while a request is in flight, so a second sender never sends the same entry meanwhile;
  a sender killed with SIGKILL mid-request has its entry sent again within 10 s of the restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from cli import main as cli
from postcall.outbox import OutboxDelivery
from postcall.processor import PostCallProcessor
from records import migrate
from records.outcome import SessionOutcome, TranscriptItem
from records.store import SessionStore
from telemetry import metrics
from tests.doubles.postgres import database_url, postgres_server, postgres_url  # noqa: F401 - pytest fixtures
from tests.doubles.webhook_receiver import WebhookReceiver
from tests.ports import free_port
from worker.settings import Settings

SECRET = "whsec-delivery-test-secret-0123456789"
REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def settings_for(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "VOICE_WORKER_MODE": "dev",
        "POSTCALL_WEBHOOK_URL": url,
        "POSTCALL_WEBHOOK_SECRET": SECRET,
        "OUTBOX_RETRY_BASE_S": 0.01,
        "OUTBOX_RETRY_MAX_S": 0.05,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def make_outcome() -> SessionOutcome:
    now = datetime.now(UTC)
    return SessionOutcome(
        session_id=uuid.uuid4(),
        session_type="live",
        agent_id=uuid.uuid4(),
        started_at=now - timedelta(seconds=20),
        ended_at=now,
        end_reason="user_requested",
        transcript=(TranscriptItem(role="user", text="Bye.", created_at=now),),
    )


async def queue_one(store: SessionStore, settings: Settings) -> SessionOutcome:
    outcome = make_outcome()
    assert await PostCallProcessor(store, settings, None, None).process(outcome) is not None
    return outcome


def parked_total() -> float:
    return REGISTRY.get_sample_value("voice_worker_postcall_webhook_parked_total") or 0.0


@pytest.fixture
async def migrated_url(database_url: str) -> str:  # noqa: F811 - the fixture imported above
    await asyncio.to_thread(migrate.upgrade, database_url)
    return database_url


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    r = WebhookReceiver(secret=SECRET)
    try:
        yield r
    finally:
        await r.stop()


async def deliver_until(delivery: OutboxDelivery, done: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not await done():
            await delivery.drain_once()
            await asyncio.sleep(0.02)


# --- a receiver slower than the timeout -------------------------------------------------------------------------


def sample_receiver_module() -> dict[str, Any]:
    """The sample receiver of docs/webhooks.md, as the docs show it."""
    text = (REPO / "docs" / "webhooks.md").read_text()
    section = text[text.index("## A receiver that deduplicates") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    namespace: dict[str, Any] = {"__name__": "docs_webhooks_sample"}
    exec(compile(code.group(1), "docs/webhooks.md", "exec"), namespace)
    return namespace


async def test_a_receiver_slower_than_the_timeout_gets_the_record_at_most_max_attempts_times(
    migrated_url: str, receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    await receiver.start()
    receiver.delay_s = 1.0  # acknowledges every request, but later than the timeout
    settings = settings_for(receiver.url, OUTBOX_REQUEST_TIMEOUT_S=0.3, OUTBOX_MAX_ATTEMPTS=3)
    store = SessionStore(migrated_url)
    outcome = await queue_one(store, settings)
    parked_before = parked_total()
    delivery = OutboxDelivery.from_settings(store, settings, on_parked=metrics.webhook_parked)
    assert delivery is not None

    async def parked() -> bool:
        entry = await store.outbox_entry(outcome.session_id)
        return entry is not None and entry.parked_at is not None

    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="voice_worker.outbox"):
        await deliver_until(delivery, parked)
    elapsed = time.monotonic() - started
    # no further attempt, however long the loop goes on
    for _ in range(5):
        assert (await delivery.drain_once()).attempted == 0
    await delivery.aclose()

    # the configured timeout applied (not a fixed 10 s): three attempts of 0.3 s, not one slow acknowledgement
    assert elapsed < 5.0
    assert len(receiver.requests) == 3
    assert {r.idempotency_key for r in receiver.requests} == {str(outcome.session_id)}
    assert [r.headers["X-Voice-Worker-Delivery-Attempt"] for r in receiver.requests] == ["1", "2", "3"]
    assert len({r.body for r in receiver.requests}) == 1
    entry = await store.outbox_entry(outcome.session_id)
    assert entry is not None and entry.state == "parked" and entry.attempts == 3
    assert entry.last_error == "no answer within 0.3 s"
    assert parked_total() == parked_before + 1
    (line,) = [r.getMessage() for r in caplog.records if "parked" in r.getMessage()]
    assert str(outcome.session_id) in line and f"voice-worker outbox resend {entry.id}" in line
    assert SECRET not in caplog.text

    # what the receiver saw, replayed into the docs' sample receiver: processed once, acknowledged every time
    sample = sample_receiver_module()
    processed: list[str] = []
    sample_receiver = sample["SessionReceiver"](
        SECRET, ":memory:", lambda _db, record: processed.append(record["session_id"])
    )
    statuses = [sample_receiver.handle(r.body, r.headers) for r in receiver.requests]
    assert statuses == [200, 200, 200]
    assert processed == [str(outcome.session_id)]
    await store.aclose()


async def test_the_docs_sample_receiver_deduplicates_real_deliveries(migrated_url: str, tmp_path: Path) -> None:
    sample = sample_receiver_module()
    processed: list[str] = []
    receiver = sample["SessionReceiver"](
        SECRET, str(tmp_path / "keys.db"), lambda _db, record: processed.append(record["session_id"])
    )
    port = free_port()
    server = sample["serve"](receiver, port)
    serving = asyncio.create_task(asyncio.to_thread(server.serve_forever, 0.05))
    try:
        settings = settings_for(f"http://127.0.0.1:{port}/hooks", OUTBOX_LEASE_S=1)
        store = SessionStore(migrated_url)
        outcome = await queue_one(store, settings)
        delivery = OutboxDelivery.from_settings(store, settings)
        assert delivery is not None
        # the sender loses its database right after the receiver's 2xx, before recording it
        record_delivery = store.mark_outbox_delivered

        async def database_gone(item_id: int, *, at: datetime) -> None:
            store.mark_outbox_delivered = record_delivery  # type: ignore[method-assign]  # restores the method
            raise ConnectionError("database gone")

        store.mark_outbox_delivered = database_gone  # type: ignore[method-assign]  # fails once, then restores
        with pytest.raises(ConnectionError):
            await delivery.drain_once()
        # the lease runs out and the record is sent again: the receiver acknowledges without processing it twice
        await asyncio.sleep(1.1)
        assert (await delivery.drain_once()).delivered == 1
        await delivery.aclose()
        # a forged one is refused
        forged = sample["SessionReceiver"]("another-secret", ":memory:", lambda _db, _r: None)
        assert forged.handle(b"{}", {"Idempotency-Key": "x", "X-Voice-Worker-Timestamp": str(int(time.time()))}) == 401
        assert processed == [str(outcome.session_id)]
        await store.aclose()
    finally:
        server.shutdown()
        await serving
        server.server_close()


# --- a receiver that is always down -----------------------------------------------------------------------------


async def test_an_always_down_receiver_has_the_entry_parked_after_the_limit_and_resent_from_the_cli(
    migrated_url: str, receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()  # nothing listens: connection refused, every time
    url = f"http://127.0.0.1:{port}/hooks/session"
    settings = settings_for(url, OUTBOX_MAX_ATTEMPTS=4)
    store = SessionStore(migrated_url)
    outcome = await queue_one(store, settings)
    parked_before = parked_total()
    delivery = OutboxDelivery.from_settings(store, settings, on_parked=metrics.webhook_parked, poll_interval_s=0.05)
    assert delivery is not None
    loop = asyncio.create_task(delivery.run())

    async def parked() -> bool:
        entry = await store.outbox_entry(outcome.session_id)
        return entry is not None and entry.parked_at is not None

    async with asyncio.timeout(20):
        while not await parked():
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # the loop keeps running: no attempt on a parked entry
    assert await delivery.flush(timeout=5) == 0  # nothing queued: the parked entry is not retried at exit either
    await asyncio.wait_for(loop, 5)
    await delivery.aclose()

    entry = await store.outbox_entry(outcome.session_id)
    assert entry is not None and entry.attempts == 4 and entry.state == "parked"
    assert entry.last_error is not None and "Connect" in entry.last_error
    assert parked_total() == parked_before + 1
    assert await store.next_outbox_due_at() is None
    assert await store.outbox_counts() == {"queued": 0, "parked": 1}

    # the operator's view
    monkeypatch.setenv("DATABASE_URL", migrated_url)
    monkeypatch.setenv("POSTCALL_WEBHOOK_URL", url)
    monkeypatch.setenv("POSTCALL_WEBHOOK_SECRET", SECRET)
    assert await asyncio.to_thread(cli.main, ["outbox", "list"]) == 0
    listing = capsys.readouterr().out
    assert re.search(rf"\b{entry.id}\s+{outcome.session_id}\s+parked\s+4\b", listing), listing
    assert "1 entry (parked)" in listing
    assert await asyncio.to_thread(cli.main, ["outbox", "show", str(outcome.session_id)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["id"] == entry.id and shown["state"] == "parked" and shown["attempts"] == 4
    assert shown["payload"]["session_id"] == str(outcome.session_id)
    assert SECRET not in json.dumps(shown)

    # still down: resend fails, the entry is queued again for the worker's schedule (exit 1)
    assert await asyncio.to_thread(cli.main, ["outbox", "resend", str(entry.id)]) == 1
    assert "attempt failed" in capsys.readouterr().out
    requeued = await store.outbox_entry(outcome.session_id)
    assert requeued is not None and requeued.state == "queued" and requeued.attempts == 1

    # the receiver is back: resend delivers it (exit 0), once
    await receiver.start(port)
    await store.park_outbox(entry.id, attempts=1, error="parked for the test", at=store.now())
    assert await asyncio.to_thread(cli.main, ["outbox", "resend", str(entry.id)]) == 0
    assert "delivered" in capsys.readouterr().out
    assert [r.status for r in receiver.requests] == [204]
    assert await asyncio.to_thread(cli.main, ["outbox", "resend", str(entry.id)]) == 1
    assert "already delivered" in capsys.readouterr().err
    assert await asyncio.to_thread(cli.main, ["outbox", "show", "99999"]) == 1
    await store.aclose()


async def test_an_entry_older_than_the_maximum_age_is_parked_at_its_next_failure(migrated_url: str) -> None:
    now = [T0]
    store = SessionStore(migrated_url, clock=lambda: now[0])
    url = f"http://127.0.0.1:{free_port()}/hooks/session"
    settings = settings_for(url, OUTBOX_MAX_AGE_S=3600)
    outcome = await queue_one(store, settings)
    delivery = OutboxDelivery.from_settings(store, settings, rng=random.Random(1))
    assert delivery is not None
    assert (await delivery.drain_once()).parked == 0  # attempt 1 of 25, young: retried
    now[0] += timedelta(hours=2)  # the worker was down meanwhile
    assert (await delivery.drain_once()).parked == 1
    await delivery.aclose()
    entry = await store.outbox_entry(outcome.session_id)
    assert entry is not None and entry.state == "parked" and entry.attempts == 2
    await store.aclose()


# --- leases: renewed in flight, short after a crash -------------------------------------------------------------


async def test_the_lease_is_renewed_while_a_slow_request_is_in_flight(
    migrated_url: str, receiver: WebhookReceiver
) -> None:
    await receiver.start()
    receiver.delay_s = 2.5  # within the timeout, but 2.5 leases long
    settings = settings_for(receiver.url, OUTBOX_REQUEST_TIMEOUT_S=5, OUTBOX_LEASE_S=1)
    store, other_store = SessionStore(migrated_url), SessionStore(migrated_url)
    outcome = await queue_one(store, settings)
    first = OutboxDelivery.from_settings(store, settings)
    other = OutboxDelivery.from_settings(other_store, settings)  # another worker on the same database
    assert first is not None and other is not None

    sending = asyncio.create_task(first.drain_once())
    await receiver.wait_for_requests(1, timeout=5)
    other_attempts = 0
    while not sending.done():
        other_attempts += (await other.drain_once()).attempted
        await asyncio.sleep(0.1)
    assert (await sending).delivered == 1
    assert other_attempts == 0
    assert len(receiver.requests) == 1
    entry = await store.outbox_entry(outcome.session_id)
    assert entry is not None and entry.state == "delivered" and entry.attempts == 1
    for d in (first, other):
        await d.aclose()
    await store.aclose()
    await other_store.aclose()


def _sender(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.doubles.outbox_sender"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


async def _started(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
    assert line.strip() == "running", line


async def test_a_sender_killed_mid_delivery_has_the_entry_redelivered_within_10_s_of_its_restart(
    migrated_url: str, receiver: WebhookReceiver
) -> None:
    await receiver.start()
    receiver.hang_next(1)  # the first request is never answered: the sender dies waiting for it
    # production defaults for timeout and lease (10 s, 5 s): the point is that they are short enough
    settings = settings_for(receiver.url)
    store = SessionStore(migrated_url)
    outcome = await queue_one(store, settings)
    await store.aclose()
    env = {
        **os.environ,
        "VOICE_WORKER_MODE": "dev",
        "DATABASE_URL": migrated_url,
        "POSTCALL_WEBHOOK_URL": receiver.url,
        "POSTCALL_WEBHOOK_SECRET": SECRET,
        "PROMETHEUS_PORT": "0",
    }
    for name in ("OUTBOX_LEASE_S", "OUTBOX_REQUEST_TIMEOUT_S", "OUTBOX_RETRY_BASE_S", "OUTBOX_RETRY_MAX_S"):
        env.pop(name, None)

    first = _sender(env)
    try:
        await _started(first)
        await receiver.wait_for_requests(1, timeout=30)
        # in flight past its first lease renewals, then gone without a word
        await asyncio.sleep(2.0)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    restarted_at = time.monotonic()
    second = _sender(env)
    store = SessionStore(migrated_url)
    try:
        await receiver.wait_for_accepted(1, timeout=30)
        redelivered_after = time.monotonic() - restarted_at
        print(f"redelivered {redelivered_after:.1f} s after the restart")
        async with asyncio.timeout(10):  # and recorded as delivered
            while (entry := await store.outbox_entry(outcome.session_id)) is None or entry.state != "delivered":
                await asyncio.sleep(0.05)
    finally:
        second.send_signal(signal.SIGKILL)
        second.wait(10)
        await store.aclose()

    assert redelivered_after < 10.0, f"redelivered {redelivered_after:.1f} s after the restart"
    assert [r.idempotency_key for r in receiver.requests] == [str(outcome.session_id)] * 2
    assert [r.headers["X-Voice-Worker-Delivery-Attempt"] for r in receiver.requests] == ["1", "2"]
