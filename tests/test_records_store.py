"""SessionStore against a real SQLite file and a real PostgreSQL server: schema, round trips, memory, outbox."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import make_url

from records import migrate
from records.engine import create_engine
from records.outcome import (
    MemberChange,
    MemoryState,
    ProcedureChoice,
    SessionOutcome,
    SessionStatus,
    SessionTerminationReason,
    SessionType,
    SummaryState,
    TranscriptItem,
    TurnMetrics,
)
from records.schema import metadata
from records.store import PostcallResult, SessionConflictError, SessionStore
from tests.doubles.postgres import database_url, postgres_server, postgres_url  # noqa: F401 - pytest fixtures

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
AGENT = uuid.UUID("11111111-1111-4111-8111-111111111111")
REVISION = uuid.UUID("22222222-2222-4222-8222-222222222222")


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def make_outcome(session_id: uuid.UUID, **overrides: object) -> SessionOutcome:
    values: dict[str, object] = {
        "session_id": session_id,
        "session_type": "live",
        "agent_id": AGENT,
        "revision_id": REVISION,
        "end_user_id": "user-42",
        "started_at": T0,
        "ended_at": T0 + timedelta(minutes=3),
        "end_reason": "participant_left",
        "procedure": ProcedureChoice(
            id=uuid.uuid4(), name="Refunds", router_latency_ms=412.5, reason="asked for a refund"
        ),
        "member_changes": [MemberChange(at=T0 + timedelta(seconds=30), to_member_id=uuid.uuid4(), reason="billing")],
        "transcript": [
            TranscriptItem(role="assistant", text="Hello, how can I help?", created_at=T0),
            TranscriptItem(role="user", text="I want a refund for order 77.", created_at=T0 + timedelta(seconds=4)),
            TranscriptItem(role="assistant", text="Done.", created_at=T0 + timedelta(seconds=9), interrupted=True),
        ],
        "turn_metrics": [
            TurnMetrics(
                turn_index=1,
                created_at=T0 + timedelta(seconds=9),
                end_of_speech_to_first_audio_ms=820.0,
                llm_ttft_ms=310.5,
                tts_ttfb_ms=120.25,
            ),
        ],
        "usage": {
            "llm_prompt_tokens": 1200,
            "llm_completion_tokens": 80,
            "tts_characters": 64,
            "stt_audio_s": 41.5,
        },
        "summary_instructions": "Summarise in one sentence.",
    }
    values.update(overrides)
    return SessionOutcome.model_validate(values)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0 + timedelta(minutes=5))


@pytest.fixture
async def store(database_url: str, clock: FakeClock) -> AsyncIterator[SessionStore]:  # noqa: F811 - the fixture imported above
    await asyncio.to_thread(migrate.upgrade, database_url)
    s = SessionStore(database_url, retention_days=30, clock=clock)
    try:
        yield s
    finally:
        await s.aclose()


async def test_migrations_are_idempotent_and_match_the_models(database_url: str) -> None:  # noqa: F811 - the fixture imported above
    await asyncio.to_thread(migrate.upgrade, database_url)
    await asyncio.to_thread(migrate.upgrade, database_url)
    assert migrate.current_revision(database_url) == migrate.head_revision()
    if database_url.startswith("sqlite"):
        assert Path(make_url(database_url).database or "").is_file()
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    finally:
        engine.dispose()
    assert diff == []


async def test_concurrent_upgrades_both_succeed(database_url: str) -> None:  # noqa: F811 - the fixture imported above
    await asyncio.gather(
        asyncio.to_thread(migrate.upgrade, database_url), asyncio.to_thread(migrate.upgrade, database_url)
    )
    assert migrate.current_revision(database_url) == migrate.head_revision()


def test_head_is_alembics_head() -> None:
    # start-up skips alembic when the database is stamped HEAD: a migration added without moving HEAD would
    # never run on a database that was current before it
    assert migrate.head_revision() == migrate.HEAD


async def test_an_older_schema_is_brought_to_head_and_a_current_one_without_importing_alembic(
    database_url: str,  # noqa: F811 - the fixture imported above
) -> None:
    await asyncio.to_thread(migrate.upgrade, database_url, "0003_outbox_parking")
    await asyncio.to_thread(migrate.upgrade, database_url)
    assert migrate.current_revision(database_url) == migrate.HEAD
    # a fresh interpreter, as a worker's start: the database is current, so alembic stays unimported
    probe = (
        "import sys\n"
        "from records import migrate\n"
        f"migrate.upgrade({database_url!r})\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))\n"
    )
    done = await asyncio.create_subprocess_exec(
        sys.executable, "-c", probe, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await done.communicate()
    assert done.returncode == 0, err.decode()
    assert out.decode().strip() == "[]"


async def test_door_created_session_round_trips_through_start_and_completion(store: SessionStore) -> None:
    sid = uuid.uuid4()
    created = await store.create_session(
        sid, "live", agent_id=AGENT, context_variables={"end_user_id": "user-42", "plan": "gold"}
    )
    assert created.status is SessionStatus.CREATED
    assert created.summary_state is SummaryState.PENDING and created.memory_state is MemoryState.PENDING

    started = await store.mark_started(
        sid, session_type="live", revision_id=REVISION, agent_id=AGENT, end_user_id="user-42", started_at=T0
    )
    assert started.status is SessionStatus.ACTIVE and started.started_at == T0 and started.revision_id == REVISION

    outcome = make_outcome(sid)
    await store.complete(outcome)
    record = await store.get(sid)
    assert record is not None
    assert record.status is SessionStatus.ENDED
    assert record.session_type is SessionType.LIVE
    assert (record.agent_id, record.team_id, record.revision_id) == (AGENT, None, REVISION)
    assert record.end_user_id == "user-42"
    assert record.context_variables == {"end_user_id": "user-42", "plan": "gold"}
    assert (record.started_at, record.ended_at) == (outcome.started_at, outcome.ended_at)
    assert record.started_at.tzinfo is not None
    assert record.end_reason is SessionTerminationReason.PARTICIPANT_LEFT
    assert record.procedure == outcome.procedure
    assert record.member_changes == outcome.member_changes
    assert record.transcript == outcome.transcript
    assert record.turn_metrics == outcome.turn_metrics
    assert record.usage == outcome.usage
    assert record.created_at == created.created_at


async def test_worker_creates_the_row_when_no_door_did(store: SessionStore) -> None:
    sid = uuid.uuid4()
    started = await store.mark_started(sid, session_type="simulation", revision_id=REVISION, team_id=AGENT)
    assert started.status is SessionStatus.ACTIVE and started.team_id == AGENT

    sid2 = uuid.uuid4()
    record = await store.complete(make_outcome(sid2))
    assert record.status is SessionStatus.ENDED and record.transcript == make_outcome(sid2).transcript
    assert await store.get(uuid.uuid4()) is None


async def test_create_session_is_idempotent_and_rejects_a_different_session_under_the_same_id(
    store: SessionStore,
) -> None:
    sid = uuid.uuid4()
    first = await store.create_session(sid, "test", agent_id=AGENT)
    again = await store.create_session(sid, "test", agent_id=AGENT)
    assert again == first
    with pytest.raises(SessionConflictError):
        await store.create_session(sid, "live", agent_id=AGENT)
    with pytest.raises(ValueError):
        await store.create_session(uuid.uuid4(), "live")


async def test_completion_never_turns_a_door_test_session_into_a_live_one(store: SessionStore) -> None:
    sid = uuid.uuid4()
    await store.create_session(sid, "test", agent_id=AGENT)
    record = await store.complete(make_outcome(sid, session_type="live"))
    assert record.session_type is SessionType.TEST
    assert record.summary_state is SummaryState.SUPPRESSED and record.memory_state is MemoryState.SUPPRESSED
    assert record.transcript == make_outcome(sid).transcript


async def _finish_with_facts(store: SessionStore, sid: uuid.UUID, facts: list[str], cap: int = 5) -> None:
    await store.finish_postcall(
        sid,
        PostcallResult(
            summary=None, summary_state=SummaryState.SKIPPED, memory_state=MemoryState.SYNCED, new_facts=facts
        ),
        fact_cap=cap,
    )


async def test_memory_merge_dedupes_case_insensitively_keeps_newest_and_caps(
    store: SessionStore, clock: FakeClock
) -> None:
    s1, s2 = uuid.uuid4(), uuid.uuid4()
    await store.complete(make_outcome(s1))
    await store.complete(make_outcome(s2))

    await _finish_with_facts(
        store, s1, ["Prefers email.", "Has a gold plan.", "prefers EMAIL.", "Lives in Lyon.", "  "], cap=3
    )
    assert await store.facts_for("user-42") == ["Prefers email.", "Has a gold plan.", "Lives in Lyon."]

    clock.advance(days=1)
    await _finish_with_facts(store, s2, ["PREFERS  email.", "Owns a Model X kettle."], cap=3)
    facts = await store.memory_facts("user-42")
    assert [f.fact for f in facts] == ["PREFERS email.", "Owns a Model X kettle.", "Has a gold plan."]
    reworded = facts[0]
    assert reworded.created_at == T0 + timedelta(minutes=5)  # first seen in call 1
    assert reworded.last_seen_at == clock.now and reworded.source_session_id == s2
    assert await store.facts_for("someone-else") == []


async def test_memory_older_than_retention_is_not_returned_and_is_pruned(store: SessionStore, clock: FakeClock) -> None:
    s1, s2 = uuid.uuid4(), uuid.uuid4()
    await store.complete(make_outcome(s1))
    await store.complete(make_outcome(s2))
    await _finish_with_facts(store, s1, ["Old fact."])
    clock.advance(days=31)
    assert await store.facts_for("user-42") == []
    await _finish_with_facts(store, s2, ["New fact."])
    assert await store.facts_for("user-42") == ["New fact."]
    clock.advance(days=-31)  # seen from before it expired, the old row would show again had it not been deleted
    assert await store.facts_for("user-42") == ["New fact."]


async def test_concurrent_merges_for_one_end_user_do_not_fail_or_duplicate(store: SessionStore) -> None:
    sids = [uuid.uuid4() for _ in range(4)]
    for sid in sids:
        await store.complete(make_outcome(sid))
    await asyncio.gather(
        *(_finish_with_facts(store, sid, ["Shared fact.", f"Own fact {i}."], cap=10) for i, sid in enumerate(sids))
    )
    facts = await store.facts_for("user-42")
    assert facts.count("Shared fact.") == 1
    assert sorted(f for f in facts if f.startswith("Own")) == [f"Own fact {i}." for i in range(4)]


async def test_outbox_entry_is_written_with_the_record_and_never_requeued_once_delivered(
    store: SessionStore, clock: FakeClock
) -> None:
    sid = uuid.uuid4()
    await store.complete(make_outcome(sid))
    result = PostcallResult(summary="s1", summary_state=SummaryState.COMPLETED, memory_state=MemoryState.SKIPPED)
    record = await store.finish_postcall(sid, result, fact_cap=5, webhook_payload=lambda r: {"summary": r.summary})
    assert record.summary == "s1" and record.postcall_completed_at == clock.now
    entry = await store.outbox_entry(sid)
    assert entry is not None and entry.payload == {"summary": "s1"} and entry.attempts == 0

    # processed again before delivery: the entry carries the newest record, still once
    result2 = PostcallResult(summary="s2", summary_state=SummaryState.COMPLETED, memory_state=MemoryState.SKIPPED)
    await store.finish_postcall(sid, result2, fact_cap=5, webhook_payload=lambda r: {"summary": r.summary})
    assert [e.payload for e in await store.undelivered_outbox()] == [{"summary": "s2"}]

    await store.mark_outbox_delivered(entry.id, at=clock.now)
    result3 = PostcallResult(summary="s3", summary_state=SummaryState.COMPLETED, memory_state=MemoryState.SKIPPED)
    await store.finish_postcall(sid, result3, fact_cap=5, webhook_payload=lambda r: {"summary": r.summary})
    delivered = await store.outbox_entry(sid)
    assert delivered is not None and delivered.delivered_at == clock.now and delivered.payload == {"summary": "s2"}
    assert await store.undelivered_outbox() == []
    assert await store.claim_due_outbox(now=clock.now + timedelta(days=1), limit=10, lease=timedelta(seconds=5)) == []


async def test_a_claimed_outbox_entry_is_leased_until_the_lease_expires(store: SessionStore, clock: FakeClock) -> None:
    sid = uuid.uuid4()
    await store.complete(make_outcome(sid))
    result = PostcallResult(summary=None, summary_state=SummaryState.SKIPPED, memory_state=MemoryState.SKIPPED)
    await store.finish_postcall(sid, result, fact_cap=5, webhook_payload=lambda r: {"id": str(r.id)})

    lease = timedelta(seconds=40)
    first = await store.claim_due_outbox(now=clock.now, limit=10, lease=lease)
    assert [(e.session_id, e.attempts) for e in first] == [(sid, 1)]
    assert await store.claim_due_outbox(now=clock.now + timedelta(seconds=39), limit=10, lease=lease) == []
    again = await store.claim_due_outbox(now=clock.now + timedelta(seconds=40), limit=10, lease=lease)
    assert [e.attempts for e in again] == [2]


async def test_the_claims_attempt_count_fences_lease_renewal_failure_and_parking(
    store: SessionStore, clock: FakeClock
) -> None:
    sid = uuid.uuid4()
    await store.complete(make_outcome(sid))
    result = PostcallResult(summary=None, summary_state=SummaryState.SKIPPED, memory_state=MemoryState.SKIPPED)
    await store.finish_postcall(sid, result, fact_cap=5, webhook_payload=lambda r: {"id": str(r.id)})
    lease = timedelta(seconds=5)

    (first,) = await store.claim_due_outbox(now=clock.now, limit=10, lease=lease)
    assert await store.renew_outbox_lease(first.id, attempts=first.attempts, until=clock.now + timedelta(seconds=10))
    assert await store.claim_due_outbox(now=clock.now + timedelta(seconds=9), limit=10, lease=lease) == []
    # the first sender stalls past its renewed lease: a second one takes the entry
    clock.advance(seconds=11)
    (second,) = await store.claim_due_outbox(now=clock.now, limit=10, lease=lease)
    assert second.attempts == first.attempts + 1
    # the stale sender can no longer renew, reschedule or park it
    assert not await store.renew_outbox_lease(first.id, attempts=first.attempts, until=clock.now + lease)
    await store.mark_outbox_failed(first.id, error="stale", next_attempt_at=clock.now, attempts=first.attempts)
    assert not await store.park_outbox(first.id, attempts=first.attempts, error="stale", at=clock.now)
    assert await store.claim_due_outbox(now=clock.now, limit=10, lease=lease) == []

    assert await store.park_outbox(second.id, attempts=second.attempts, error="HTTP 503", at=clock.now)
    assert await store.outbox_counts() == {"queued": 0, "parked": 1}
    assert await store.undelivered_outbox() == []
    assert await store.next_outbox_due_at() is None
    assert await store.claim_due_outbox(now=clock.now + timedelta(days=2), limit=10, lease=lease) == []
    (parked,) = await store.list_outbox("parked")
    assert parked.state == "parked" and parked.last_error == "HTTP 503" and parked.parked_at == clock.now

    clock.advance(seconds=60)
    requeued = await store.requeue_outbox(parked.id, now=clock.now)
    assert requeued is not None and requeued.state == "queued" and requeued.attempts == 0
    assert requeued.created_at == clock.now  # the age budget starts again
    again = await store.claim_outbox_entry(parked.id, now=clock.now, lease=lease)
    assert again is not None and again.attempts == 1
    assert await store.claim_outbox_entry(parked.id, now=clock.now, lease=lease) is None  # leased
    await store.mark_outbox_delivered(parked.id, at=clock.now)
    assert [e.id for e in await store.list_outbox("delivered")] == [parked.id]
    assert await store.requeue_outbox(parked.id, now=clock.now) is None
    assert await store.outbox_counts() == {"queued": 0, "parked": 0}
