"""Webhook delivery through the outbox: signed, retried with backoff, exactly once, surviving restarts."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from postcall.outbox import OutboxConfigError, OutboxDelivery, retry_delay
from postcall.payload import encode_body
from postcall.processor import PostCallProcessor
from postcall.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, signed_headers, verify
from records import migrate
from records.outcome import SessionOutcome, TranscriptItem
from records.store import SessionStore
from tests.doubles.postgres import database_url, postgres_server, postgres_url  # noqa: F401 - pytest fixtures
from tests.doubles.webhook_receiver import WebhookReceiver
from tests.ports import free_port
from worker.settings import Settings

SECRET = "whsec-outbox-test-secret-0123456789"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
TINY = {"retry_base_s": 0.01, "retry_max_s": 0.05}


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def make_outcome() -> SessionOutcome:
    return SessionOutcome(
        session_id=uuid.uuid4(),
        session_type="live",
        agent_id=uuid.uuid4(),
        started_at=T0,
        ended_at=T0 + timedelta(seconds=20),
        end_reason="user_requested",
        transcript=(
            TranscriptItem(role="assistant", text="Hello!", created_at=T0),
            TranscriptItem(role="user", text="Bye.", created_at=T0 + timedelta(seconds=2)),
        ),
    )


def make_settings(url: str) -> Settings:
    return Settings(  # type: ignore[call-arg]  # pydantic-settings fills the rest from the environment
        VOICE_WORKER_MODE="dev",
        POSTCALL_WEBHOOK_URL=url,
        POSTCALL_WEBHOOK_SECRET=SECRET,
        OUTBOX_RETRY_BASE_S=0.01,
        OUTBOX_RETRY_MAX_S=0.05,
    )


async def _queue_one(store: SessionStore, url: str) -> SessionOutcome:
    outcome = make_outcome()
    assert await PostCallProcessor(store, make_settings(url), None, None).process(outcome) is not None
    return outcome


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


async def test_receiver_down_for_the_first_attempts_gets_the_record_exactly_once_across_restarts(
    migrated_url: str, receiver: WebhookReceiver
) -> None:
    clock = FakeClock(T0)
    port = free_port()
    url = f"http://127.0.0.1:{port}/hooks/session"
    store = SessionStore(migrated_url, clock=clock)
    outcome = await _queue_one(store, url)
    delivery = OutboxDelivery(store, url, SECRET, rng=random.Random(7), **TINY)

    # attempt 1: nothing listens yet (connection refused)
    first = await delivery.drain_once()
    assert (first.attempted, first.delivered) == (1, 0)
    entry = await store.outbox_entry(outcome.session_id)
    assert entry is not None and entry.attempts == 1 and entry.delivered_at is None
    assert entry.last_error is not None and "Connect" in entry.last_error

    # the receiver comes up but answers 503 twice
    await receiver.start(port)
    receiver.fail_next(2)
    assert (await delivery.drain_once()).attempted == 0  # backoff: not due yet
    clock.advance(1)
    assert (await delivery.drain_once()).delivered == 0
    assert (await store.outbox_entry(outcome.session_id)).last_error == "HTTP 503"  # type: ignore[union-attr]  # the entry exists

    # the worker restarts: new store (new connections), new delivery loop; state comes from the database
    await delivery.aclose()
    await store.aclose()
    store = SessionStore(migrated_url, clock=clock)
    delivery = OutboxDelivery(store, url, SECRET, rng=random.Random(8), **TINY)
    assert (await delivery.drain_once()).attempted == 0
    clock.advance(1)
    assert (await delivery.drain_once()).delivered == 0  # second 503
    clock.advance(1)
    assert (await delivery.drain_once()).delivered == 1

    # acknowledged: never sent again, by this loop or by the next one
    clock.advance(3600)
    assert (await delivery.drain_once()).attempted == 0
    await delivery.aclose()
    restarted = OutboxDelivery(store, url, SECRET, **TINY)
    assert (await restarted.drain_once()).attempted == 0
    await restarted.aclose()

    assert [r.status for r in receiver.requests] == [503, 503, 204]
    assert all(r.signature_valid for r in receiver.requests)
    (accepted,) = receiver.accepted
    assert accepted.idempotency_key == str(outcome.session_id)
    assert accepted.headers["X-Voice-Worker-Delivery-Attempt"] == "4"
    body = accepted.json
    assert body["event"] == "session.completed" and body["session_id"] == str(outcome.session_id)
    assert body["session"]["transcript"][1]["text"] == "Bye."
    final = await store.outbox_entry(outcome.session_id)
    assert final is not None and final.attempts == 4 and final.delivered_at is not None and final.last_error is None
    await store.aclose()


async def test_run_loop_delivers_after_recovery_and_a_stop_between_attempts_loses_nothing(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    url_db = f"sqlite:///{tmp_path / 'records.db'}"
    await asyncio.to_thread(migrate.upgrade, url_db)
    store = SessionStore(url_db)
    await receiver.start()
    receiver.fail_next(3)

    delivery = OutboxDelivery(store, receiver.url, SECRET, poll_interval_s=0.05, **TINY)
    loop = asyncio.create_task(delivery.run())
    processor = PostCallProcessor(store, make_settings(receiver.url), None, None, on_enqueued=delivery.notify)
    outcome = make_outcome()
    await processor.process(outcome)
    await receiver.wait_for_requests(2, timeout=10)

    assert await delivery.flush(timeout=5) == 1  # shut down mid-retry; the entry stays queued
    await asyncio.wait_for(loop, timeout=5)
    await delivery.aclose()
    seen_before_restart = len(receiver.requests)
    assert receiver.accepted == []

    again = OutboxDelivery(store, receiver.url, SECRET, poll_interval_s=0.05, **TINY)
    loop2 = asyncio.create_task(again.run())
    await receiver.wait_for_accepted(1, timeout=10)
    assert await again.flush(timeout=5) == 0
    await asyncio.wait_for(loop2, timeout=5)
    await again.aclose()

    assert len(receiver.accepted) == 1
    assert [r.status for r in receiver.requests] == [503] * 3 + [204]
    assert seen_before_restart in (2, 3)
    assert receiver.accepted[0].idempotency_key == str(outcome.session_id)
    await store.aclose()


async def test_a_receiver_with_another_secret_refuses_and_the_entry_stays_queued(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    url_db = f"sqlite:///{tmp_path / 'records.db'}"
    await asyncio.to_thread(migrate.upgrade, url_db)
    store = SessionStore(url_db)
    await receiver.start()
    outcome = await _queue_one(store, receiver.url)
    delivery = OutboxDelivery(store, receiver.url, "a-different-secret", **TINY)
    assert (await delivery.drain_once()).delivered == 0
    await delivery.aclose()
    assert [r.status for r in receiver.requests] == [401]
    entry = await store.outbox_entry(outcome.session_id)
    assert entry is not None and entry.delivered_at is None and entry.last_error == "HTTP 401"
    await store.aclose()


async def test_errors_never_carry_credentials_from_the_url(tmp_path: Path) -> None:
    url_db = f"sqlite:///{tmp_path / 'records.db'}"
    await asyncio.to_thread(migrate.upgrade, url_db)
    store = SessionStore(url_db)
    url = f"http://hook-user:hunter2-password@127.0.0.1:{free_port()}/hooks?token=tok-secret-9"
    outcome = await _queue_one(store, url)
    delivery = OutboxDelivery(store, url, SECRET, **TINY)
    await delivery.drain_once()
    await delivery.aclose()
    entry = await store.outbox_entry(outcome.session_id)
    assert entry is not None and entry.last_error
    for secret in ("hunter2-password", "tok-secret-9", SECRET):
        assert secret not in entry.last_error
    await store.aclose()


def test_signature_covers_timestamp_and_body_and_expires() -> None:
    body = encode_body({"b": 1, "a": "é"})
    assert body == '{"a":"é","b":1}'.encode()
    now = int(time.time())
    headers = signed_headers(SECRET.encode(), body, idempotency_key="sid-1", timestamp=now)
    assert headers["Idempotency-Key"] == "sid-1" and headers[TIMESTAMP_HEADER] == str(now)
    expected = hmac.new(SECRET.encode(), f"{now}.".encode() + body, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER] == f"v1={expected}"

    assert verify(SECRET.encode(), body, headers, now=now)
    assert not verify(SECRET.encode(), body + b" ", headers, now=now)
    assert not verify(b"other", body, headers, now=now)
    assert not verify(SECRET.encode(), body, {**headers, TIMESTAMP_HEADER: str(now - 1)}, now=now)
    assert not verify(SECRET.encode(), body, headers, now=now + 301)  # a replay minutes later
    assert json.loads(body) == {"a": "é", "b": 1}


def test_retry_delay_grows_exponentially_with_jitter_up_to_the_maximum() -> None:
    rng = random.Random(3)
    for attempts in range(1, 15):
        ceiling = min(300.0, 2.0 * 2 ** (attempts - 1))
        for _ in range(20):
            delay = retry_delay(attempts, base_s=2.0, max_s=300.0, rng=rng)
            assert ceiling / 2 <= delay <= ceiling
    assert len({retry_delay(5, base_s=2.0, max_s=300.0, rng=rng) for _ in range(10)}) > 1


def test_configuration_is_checked_without_revealing_the_secret(tmp_path: Path) -> None:
    store = SessionStore(f"sqlite:///{tmp_path / 'x.db'}")
    no_url = Settings(VOICE_WORKER_MODE="dev")  # type: ignore[call-arg]  # pydantic-settings fills the rest from the environment
    assert OutboxDelivery.from_settings(store, no_url) is None
    missing_secret = Settings(VOICE_WORKER_MODE="dev", POSTCALL_WEBHOOK_URL="http://127.0.0.1:1/h")  # type: ignore[call-arg]  # pydantic-settings fills the rest from the environment
    with pytest.raises(OutboxConfigError, match="POSTCALL_WEBHOOK_SECRET"):
        OutboxDelivery.from_settings(store, missing_secret)
    configured = make_settings("http://127.0.0.1:1/h")
    delivery = OutboxDelivery.from_settings(store, configured)
    assert delivery is not None and SECRET not in repr(delivery)
