"""The session store: session rows, per-end-user memory facts and the webhook outbox, behind async methods.

A synchronous SQLAlchemy engine does the work in worker threads (`asyncio.to_thread`), so no database call
ever runs on the event loop. Every public method is one transaction. The schema must already be current
(`records.migrate.upgrade`).

Authority over a session's type stays with whoever created the row first (normally the door, which knows
whether a call is a test call): later writers fill in blanks but never change `session_type`, `agent_id`
or `team_id`, so a worker can never turn a test session into a live one that writes memory.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from contract.session_type import SessionType
from records.engine import create_engine
from records.facts import StoredFact, plan_merge
from records.outcome import (
    MemoryState,
    ProcedureChoice,
    SessionOutcome,
    SessionStatus,
    SummaryState,
)
from records.record import MemoryFact, OutboxItem, SessionRecord
from records.schema import memory_facts, outbox, sessions

P = ParamSpec("P")
T = TypeVar("T")

Clock = Callable[[], datetime]
PayloadBuilder = Callable[[SessionRecord], dict[str, Any]]

# An outbox entry still to be sent: neither acknowledged nor parked.
_QUEUED = sa.and_(outbox.c.delivered_at.is_(None), outbox.c.parked_at.is_(None))

OutboxState = Literal["queued", "parked", "delivered", "all"]
OUTBOX_STATES: tuple[OutboxState, ...] = ("queued", "parked", "delivered", "all")

# Concurrent writers can collide on a unique key (two calls of one end user, door and worker creating the
# same session); the loser's transaction is simply run again and then sees the winner's row.
_INTEGRITY_RETRIES = 3


class SessionConflictError(ValueError):
    """A session id is already used with a different type, agent or team."""


@dataclass(frozen=True)
class PostcallResult:
    """What post-call processing produced; written with the outbox entry in one transaction."""

    summary: str | None
    summary_state: SummaryState
    memory_state: MemoryState
    postcall_error: str | None = None
    # merged into the end user's memory when not None (an empty list still refreshes retention/cap)
    new_facts: list[str] | None = None


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _as_uuid(value: uuid.UUID | str) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def _require_one_owner(agent_id: uuid.UUID | None, team_id: uuid.UUID | None) -> None:
    if (agent_id is None) == (team_id is None):
        raise ValueError("exactly one of agent_id and team_id is required")


def new_session_values(session_id: uuid.UUID, session_type: SessionType, now: datetime) -> dict[str, Any]:
    """A new session row's columns, before its agent or team and seeds."""
    suppressed = session_type.suppresses_postcall
    return {
        "id": session_id,
        "session_type": session_type.value,
        "status": SessionStatus.CREATED.value,
        "created_at": now,
        "updated_at": now,
        "member_changes": [],
        "transcript": [],
        "turn_metrics": [],
        "usage": {},
        "summary_state": (SummaryState.SUPPRESSED if suppressed else SummaryState.PENDING).value,
        "memory_state": (MemoryState.SUPPRESSED if suppressed else MemoryState.PENDING).value,
    }


def created_session_values(
    session_id: uuid.UUID | str,
    session_type: SessionType | str,
    now: datetime,
    *,
    agent_id: uuid.UUID | None,
    team_id: uuid.UUID | None,
    context_variables: Mapping[str, Any] | None,
    end_user_id: str | None = None,
) -> dict[str, Any]:
    """The row `SessionStore.create_session` inserts (the door's PostgreSQL writer inserts the same one)."""
    _require_one_owner(agent_id, team_id)
    values = new_session_values(_as_uuid(session_id), SessionType(session_type), now)
    values.update(
        agent_id=agent_id,
        team_id=team_id,
        end_user_id=end_user_id,
        context_variables=dict(context_variables) if context_variables is not None else None,
    )
    return values


def check_same_session(existing: Mapping[Any, Any], created: Mapping[str, Any]) -> None:
    """Creating a session again is a no-op only with the same type, agent and team; else `SessionConflictError`."""
    if any(existing[column] != created[column] for column in ("session_type", "agent_id", "team_id")):
        raise SessionConflictError(f"session {created['id']} already exists with another type, agent or team")


def _to_record(row: sa.Row[Any]) -> SessionRecord:
    m = row._mapping
    procedure = None
    if any(
        m[c] is not None for c in ("procedure_id", "procedure_name", "procedure_router_latency_ms", "procedure_reason")
    ):
        procedure = ProcedureChoice(
            id=m["procedure_id"],
            name=m["procedure_name"],
            router_latency_ms=m["procedure_router_latency_ms"],
            reason=m["procedure_reason"],
        )
    return SessionRecord(
        id=m["id"],
        session_type=m["session_type"],
        agent_id=m["agent_id"],
        team_id=m["team_id"],
        revision_id=m["revision_id"],
        end_user_id=m["end_user_id"],
        context_variables=m["context_variables"],
        status=m["status"],
        created_at=m["created_at"],
        started_at=m["started_at"],
        ended_at=m["ended_at"],
        end_reason=m["end_reason"],
        procedure=procedure,
        member_changes=m["member_changes"],
        transcript=m["transcript"],
        turn_metrics=m["turn_metrics"],
        tool_calls=m["tool_calls"] or (),
        usage=m["usage"],
        summary=m["summary"],
        summary_state=m["summary_state"],
        memory_state=m["memory_state"],
        postcall_error=m["postcall_error"],
        postcall_completed_at=m["postcall_completed_at"],
        updated_at=m["updated_at"],
    )


def _to_outbox_item(row: sa.Row[Any]) -> OutboxItem:
    return OutboxItem.model_validate(dict(row._mapping))


class SessionStore:
    def __init__(
        self,
        database_url: str,
        *,
        retention_days: int = 180,
        clock: Clock | None = None,
        engine: Engine | None = None,
    ) -> None:
        if retention_days < 1:
            raise ValueError("retention_days must be at least 1")
        self._engine = engine if engine is not None else create_engine(database_url)
        self._retention = timedelta(days=retention_days)
        self._clock = clock or _utcnow

    @classmethod
    def from_settings(cls, settings: Any, *, clock: Clock | None = None) -> SessionStore:
        return cls(settings.database_url, retention_days=settings.memory_retention_days, clock=clock)

    def now(self) -> datetime:
        return self._clock()

    async def aclose(self) -> None:
        await asyncio.to_thread(self._engine.dispose)

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    def _transaction(self, fn: Callable[[Connection], T]) -> T:
        for attempt in range(_INTEGRITY_RETRIES):
            try:
                with self._engine.begin() as conn:
                    return fn(conn)
            except IntegrityError:
                if attempt == _INTEGRITY_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    @staticmethod
    def _select_session(conn: Connection, session_id: uuid.UUID, *, lock: bool = False) -> sa.Row[Any] | None:
        stmt = sa.select(sessions).where(sessions.c.id == session_id)
        if lock:
            stmt = stmt.with_for_update()
        return conn.execute(stmt).first()

    @classmethod
    def _written_session(cls, conn: Connection, session_id: uuid.UUID) -> SessionRecord:
        """The record of a session this transaction has just inserted or updated (so its row exists)."""
        row = cls._select_session(conn, session_id)
        assert row is not None
        return _to_record(row)

    def _new_session_values(self, session_id: uuid.UUID, session_type: SessionType, now: datetime) -> dict[str, Any]:
        return new_session_values(session_id, session_type, now)

    # --- sessions -------------------------------------------------------------------------------------

    async def create_session(
        self,
        session_id: uuid.UUID | str,
        session_type: SessionType | str,
        agent_id: uuid.UUID | None = None,
        team_id: uuid.UUID | None = None,
        context_variables: Mapping[str, Any] | None = None,
        end_user_id: str | None = None,
    ) -> SessionRecord:
        """The door's call. Idempotent on the id; the same id with another type/agent/team is a conflict."""
        sid = _as_uuid(session_id)
        _require_one_owner(agent_id, team_id)

        def tx(conn: Connection) -> SessionRecord:
            values = created_session_values(
                sid,
                session_type,
                self.now(),
                agent_id=agent_id,
                team_id=team_id,
                context_variables=context_variables,
                end_user_id=end_user_id,
            )
            row = self._select_session(conn, sid)
            if row is not None:
                check_same_session(row._mapping, values)
                return _to_record(row)
            conn.execute(sa.insert(sessions).values(**values))
            return self._written_session(conn, sid)

        return await self._run(self._transaction, tx)

    async def mark_started(
        self,
        session_id: uuid.UUID | str,
        *,
        session_type: SessionType | str,
        revision_id: uuid.UUID | None,
        agent_id: uuid.UUID | None = None,
        team_id: uuid.UUID | None = None,
        end_user_id: str | None = None,
        context_variables: Mapping[str, Any] | None = None,
        started_at: datetime | None = None,
    ) -> SessionRecord:
        """The worker's call when the session starts; creates the row when no door did (dispatch API)."""
        sid, stype = _as_uuid(session_id), SessionType(session_type)
        _require_one_owner(agent_id, team_id)

        def tx(conn: Connection) -> SessionRecord:
            now = self.now()
            row = self._select_session(conn, sid, lock=True)
            if row is None:
                values = self._new_session_values(sid, stype, now)
                values.update(
                    agent_id=agent_id,
                    team_id=team_id,
                    end_user_id=end_user_id,
                    context_variables=dict(context_variables) if context_variables is not None else None,
                    status=SessionStatus.ACTIVE.value,
                    started_at=started_at or now,
                    revision_id=revision_id,
                )
                conn.execute(sa.insert(sessions).values(**values))
            else:
                m = row._mapping
                changes: dict[str, Any] = {"updated_at": now, "revision_id": revision_id or m["revision_id"]}
                if m["status"] != SessionStatus.ENDED.value:
                    changes["status"] = SessionStatus.ACTIVE.value
                if m["started_at"] is None:
                    changes["started_at"] = started_at or now
                if m["end_user_id"] is None and end_user_id is not None:
                    changes["end_user_id"] = end_user_id
                if m["context_variables"] is None and context_variables is not None:
                    changes["context_variables"] = dict(context_variables)
                if m["agent_id"] is None and m["team_id"] is None:
                    changes.update(agent_id=agent_id, team_id=team_id)
                conn.execute(sa.update(sessions).where(sessions.c.id == sid).values(**changes))
            return self._written_session(conn, sid)

        return await self._run(self._transaction, tx)

    async def complete(self, outcome: SessionOutcome) -> SessionRecord:
        """Record the ended call (transcript, metrics, usage...). Post-call states start as pending,
        or suppressed for a test session; the returned record carries the authoritative session type."""

        def tx(conn: Connection) -> SessionRecord:
            now = self.now()
            row = self._select_session(conn, outcome.session_id, lock=True)
            procedure = outcome.procedure
            values: dict[str, Any] = {
                "status": SessionStatus.ENDED.value,
                "revision_id": outcome.revision_id,
                "started_at": outcome.started_at,
                "ended_at": outcome.ended_at,
                "end_reason": outcome.end_reason.value,
                "procedure_id": procedure.id if procedure else None,
                "procedure_name": procedure.name if procedure else None,
                "procedure_router_latency_ms": procedure.router_latency_ms if procedure else None,
                "procedure_reason": procedure.reason if procedure else None,
                "member_changes": [c.model_dump(mode="json") for c in outcome.member_changes],
                "transcript": [t.model_dump(mode="json") for t in outcome.transcript],
                "turn_metrics": [t.model_dump(mode="json") for t in outcome.turn_metrics],
                "tool_calls": [t.model_dump(mode="json") for t in outcome.tool_calls],
                "usage": outcome.usage,
                "updated_at": now,
            }
            if row is None:
                new = self._new_session_values(outcome.session_id, outcome.session_type, now)
                new.update(values)
                new.update(agent_id=outcome.agent_id, team_id=outcome.team_id, end_user_id=outcome.end_user_id)
                conn.execute(sa.insert(sessions).values(**new))
            else:
                m = row._mapping
                suppressed = SessionType(m["session_type"]).suppresses_postcall
                values["summary_state"] = (SummaryState.SUPPRESSED if suppressed else SummaryState.PENDING).value
                values["memory_state"] = (MemoryState.SUPPRESSED if suppressed else MemoryState.PENDING).value
                values["summary"] = None
                values["postcall_error"] = None
                values["postcall_completed_at"] = None
                if m["end_user_id"] is None:
                    values["end_user_id"] = outcome.end_user_id
                if m["agent_id"] is None and m["team_id"] is None:
                    values.update(agent_id=outcome.agent_id, team_id=outcome.team_id)
                conn.execute(sa.update(sessions).where(sessions.c.id == outcome.session_id).values(**values))
            return self._written_session(conn, outcome.session_id)

        return await self._run(self._transaction, tx)

    async def finish_postcall(
        self,
        session_id: uuid.UUID | str,
        result: PostcallResult,
        *,
        fact_cap: int,
        webhook_payload: PayloadBuilder | None = None,
    ) -> SessionRecord:
        """One transaction: the post-call fields, the end user's merged facts and (when a payload builder is
        given) the outbox entry built from the finished record. An entry already acknowledged is left alone."""
        sid = _as_uuid(session_id)

        def tx(conn: Connection) -> SessionRecord:
            now = self.now()
            row = self._select_session(conn, sid, lock=True)
            if row is None:
                raise LookupError(f"session {sid} does not exist")
            end_user_id = row._mapping["end_user_id"]
            if result.new_facts is not None and end_user_id is not None:
                self._merge_facts(conn, end_user_id, result.new_facts, sid, fact_cap, now)
            conn.execute(
                sa.update(sessions)
                .where(sessions.c.id == sid)
                .values(
                    summary=result.summary,
                    summary_state=result.summary_state.value,
                    memory_state=result.memory_state.value,
                    postcall_error=result.postcall_error,
                    postcall_completed_at=now,
                    updated_at=now,
                )
            )
            record = self._written_session(conn, sid)
            if webhook_payload is not None:
                self._enqueue(conn, sid, webhook_payload(record), now)
            return record

        return await self._run(self._transaction, tx)

    async def get(self, session_id: uuid.UUID | str) -> SessionRecord | None:
        sid = _as_uuid(session_id)

        def read() -> SessionRecord | None:
            with self._engine.connect() as conn:
                row = self._select_session(conn, sid)
                return None if row is None else _to_record(row)

        return await self._run(read)

    # --- memory ---------------------------------------------------------------------------------------

    def _merge_facts(
        self,
        conn: Connection,
        end_user_id: str,
        new_facts: list[str],
        session_id: uuid.UUID,
        cap: int,
        now: datetime,
    ) -> None:
        rows = conn.execute(
            sa.select(memory_facts).where(memory_facts.c.end_user_id == end_user_id).with_for_update()
        ).all()
        existing = [StoredFact(r.id, r.fact_key, r.fact, r.created_at, r.last_seen_at) for r in rows]
        plan = plan_merge(existing, new_facts, cap=cap, now=now, retention=self._retention)
        if plan.deletes:
            conn.execute(sa.delete(memory_facts).where(memory_facts.c.id.in_(plan.deletes)))
        for fact_id, text in plan.updates:
            conn.execute(
                sa.update(memory_facts)
                .where(memory_facts.c.id == fact_id)
                .values(fact=text, last_seen_at=now, source_session_id=session_id)
            )
        if plan.inserts:
            conn.execute(
                sa.insert(memory_facts),
                [
                    {
                        "end_user_id": end_user_id,
                        "fact_key": key,
                        "fact": text,
                        "created_at": now,
                        "last_seen_at": now,
                        "source_session_id": session_id,
                    }
                    for key, text in plan.inserts
                ],
            )

    async def memory_facts(self, end_user_id: str) -> list[MemoryFact]:
        """The end user's facts within retention, most recently seen first."""

        def read() -> list[MemoryFact]:
            cutoff = self.now() - self._retention
            with self._engine.connect() as conn:
                rows = conn.execute(
                    sa.select(memory_facts)
                    .where(memory_facts.c.end_user_id == end_user_id, memory_facts.c.last_seen_at >= cutoff)
                    .order_by(memory_facts.c.last_seen_at.desc(), memory_facts.c.id.asc())
                ).all()
            return [
                MemoryFact(
                    end_user_id=r.end_user_id,
                    fact=r.fact,
                    created_at=r.created_at,
                    last_seen_at=r.last_seen_at,
                    source_session_id=r.source_session_id,
                )
                for r in rows
            ]

        return await self._run(read)

    async def facts_for(self, end_user_id: str) -> list[str]:
        """What the agent is told about this end user at bootstrap."""
        return [f.fact for f in await self.memory_facts(end_user_id)]

    # --- outbox ---------------------------------------------------------------------------------------

    @staticmethod
    def _enqueue(conn: Connection, session_id: uuid.UUID, payload: dict[str, Any], now: datetime) -> None:
        row = conn.execute(sa.select(outbox).where(outbox.c.session_id == session_id).with_for_update()).first()
        if row is None:
            conn.execute(
                sa.insert(outbox).values(
                    session_id=session_id,
                    payload=payload,
                    attempts=0,
                    next_attempt_at=now,
                    delivered_at=None,
                    last_error=None,
                    created_at=now,
                )
            )
        elif row.delivered_at is None:
            conn.execute(sa.update(outbox).where(outbox.c.id == row.id).values(payload=payload, next_attempt_at=now))

    async def claim_due_outbox(
        self, *, now: datetime, limit: int, lease: timedelta, due_by: datetime | None = None
    ) -> list[OutboxItem]:
        """Queued entries due at `due_by` (default: `now`), each counted as one attempt and leased until `now + lease`
        so that no other delivery loop (this process after a restart, or another worker) takes it meanwhile. The
        attempt count it returns is the sender's fencing token: renewing the lease, failing or parking the entry
        needs it to match, so a sender that lost its lease cannot undo what the next one did."""
        due = now if due_by is None else due_by

        def tx(conn: Connection) -> list[OutboxItem]:
            ids: list[int] = list(
                conn.execute(
                    sa.select(outbox.c.id)
                    .where(_QUEUED, outbox.c.next_attempt_at <= due)
                    .order_by(outbox.c.next_attempt_at, outbox.c.id)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                ).scalars()
            )
            return self._claim(conn, ids, now=now, lease=lease)

        return await self._run(self._transaction, tx)

    async def claim_outbox_entry(self, entry_id: int, *, now: datetime, lease: timedelta) -> OutboxItem | None:
        """That entry, claimed as `claim_due_outbox` would, if it is queued and due (not in another sender's hands)."""

        def tx(conn: Connection) -> OutboxItem | None:
            ids: list[int] = list(
                conn.execute(
                    sa.select(outbox.c.id)
                    .where(outbox.c.id == entry_id, _QUEUED, outbox.c.next_attempt_at <= now)
                    .with_for_update(skip_locked=True)
                ).scalars()
            )
            claimed = self._claim(conn, ids, now=now, lease=lease)
            return claimed[0] if claimed else None

        return await self._run(self._transaction, tx)

    @staticmethod
    def _claim(conn: Connection, ids: list[int], *, now: datetime, lease: timedelta) -> list[OutboxItem]:
        if not ids:
            return []
        conn.execute(
            sa.update(outbox)
            .where(outbox.c.id.in_(ids))
            .values(attempts=outbox.c.attempts + 1, next_attempt_at=now + lease)
        )
        rows = conn.execute(sa.select(outbox).where(outbox.c.id.in_(ids)).order_by(outbox.c.id)).all()
        return [_to_outbox_item(r) for r in rows]

    async def renew_outbox_lease(self, item_id: int, *, attempts: int, until: datetime) -> bool:
        """Extend the sender's lease while its request is in flight; False when the entry is no longer its own."""

        def tx(conn: Connection) -> bool:
            result = conn.execute(
                sa.update(outbox)
                .where(outbox.c.id == item_id, outbox.c.attempts == attempts, _QUEUED)
                .values(next_attempt_at=until)
            )
            return bool(result.rowcount)

        return await self._run(self._transaction, tx)

    async def mark_outbox_delivered(self, item_id: int, *, at: datetime) -> None:
        # whoever sent it, an acknowledgement ends the entry (even one parked or re-leased meanwhile)
        def tx(conn: Connection) -> None:
            conn.execute(
                sa.update(outbox)
                .where(outbox.c.id == item_id, outbox.c.delivered_at.is_(None))
                .values(delivered_at=at, last_error=None, parked_at=None)
            )

        await self._run(self._transaction, tx)

    async def mark_outbox_failed(
        self, item_id: int, *, error: str, next_attempt_at: datetime, attempts: int | None = None
    ) -> None:
        """Schedule the next attempt; with `attempts` (the claim's fencing token) only while the entry is still the
        caller's."""

        def tx(conn: Connection) -> None:
            stmt = sa.update(outbox).where(outbox.c.id == item_id, _QUEUED)
            if attempts is not None:
                stmt = stmt.where(outbox.c.attempts == attempts)
            conn.execute(stmt.values(last_error=error[:2000], next_attempt_at=next_attempt_at))

        await self._run(self._transaction, tx)

    async def park_outbox(self, item_id: int, *, attempts: int, error: str, at: datetime) -> bool:
        """Give up on the entry (dead letter): no more attempts until `requeue_outbox`. False when it was no longer
        the caller's (delivered, or claimed again by another sender)."""

        def tx(conn: Connection) -> bool:
            result = conn.execute(
                sa.update(outbox)
                .where(outbox.c.id == item_id, outbox.c.attempts == attempts, _QUEUED)
                .values(last_error=error[:2000], parked_at=at)
            )
            return bool(result.rowcount)

        return await self._run(self._transaction, tx)

    async def requeue_outbox(self, entry_id: int, *, now: datetime) -> OutboxItem | None:
        """An undelivered entry (parked or queued) due now again with fresh budgets: no attempts, and its age counted
        from now (`created_at`); None when there is no such entry (unknown id, or already delivered)."""

        def tx(conn: Connection) -> OutboxItem | None:
            result = conn.execute(
                sa.update(outbox)
                .where(outbox.c.id == entry_id, outbox.c.delivered_at.is_(None))
                .values(parked_at=None, attempts=0, next_attempt_at=now, created_at=now)
            )
            if not result.rowcount:
                return None
            row = conn.execute(sa.select(outbox).where(outbox.c.id == entry_id)).first()
            return None if row is None else _to_outbox_item(row)

        return await self._run(self._transaction, tx)

    async def next_outbox_due_at(self) -> datetime | None:
        def read() -> datetime | None:
            with self._engine.connect() as conn:
                return conn.execute(
                    sa.select(outbox.c.next_attempt_at).where(_QUEUED).order_by(outbox.c.next_attempt_at).limit(1)
                ).scalar()

        return await self._run(read)

    async def outbox_entry(self, session_id: uuid.UUID | str) -> OutboxItem | None:
        sid = _as_uuid(session_id)

        def read() -> OutboxItem | None:
            with self._engine.connect() as conn:
                row = conn.execute(sa.select(outbox).where(outbox.c.session_id == sid)).first()
            return None if row is None else _to_outbox_item(row)

        return await self._run(read)

    async def outbox_entry_by_id(self, entry_id: int) -> OutboxItem | None:
        def read() -> OutboxItem | None:
            with self._engine.connect() as conn:
                row = conn.execute(sa.select(outbox).where(outbox.c.id == entry_id)).first()
            return None if row is None else _to_outbox_item(row)

        return await self._run(read)

    async def undelivered_outbox(self) -> list[OutboxItem]:
        """Queued entries (parked ones are not retried: `list_outbox("parked")`)."""

        def read() -> list[OutboxItem]:
            with self._engine.connect() as conn:
                rows = conn.execute(sa.select(outbox).where(_QUEUED).order_by(outbox.c.id)).all()
            return [_to_outbox_item(r) for r in rows]

        return await self._run(read)

    async def list_outbox(self, state: OutboxState = "parked", *, limit: int = 100) -> list[OutboxItem]:
        """Entries in that state, oldest first."""
        where = {
            "queued": _QUEUED,
            "parked": sa.and_(outbox.c.delivered_at.is_(None), outbox.c.parked_at.is_not(None)),
            "delivered": outbox.c.delivered_at.is_not(None),
            "all": sa.true(),
        }[state]

        def read() -> list[OutboxItem]:
            with self._engine.connect() as conn:
                rows = conn.execute(sa.select(outbox).where(where).order_by(outbox.c.id).limit(limit)).all()
            return [_to_outbox_item(r) for r in rows]

        return await self._run(read)

    async def outbox_counts(self) -> dict[str, int]:
        """How many entries are queued (not yet acknowledged, still retried) and parked."""

        def read() -> dict[str, int]:
            parked = sa.case((outbox.c.parked_at.is_not(None), 1), else_=0)
            # type_coerce types the sum on the Python side only (the SQL is unchanged): it counts rows
            parked_sum = sa.type_coerce(sa.func.coalesce(sa.func.sum(parked), 0), sa.Integer)
            with self._engine.connect() as conn:
                total, parked_count = conn.execute(
                    sa.select(sa.func.count(), parked_sum).where(outbox.c.delivered_at.is_(None))
                ).one()
            return {"queued": int(total) - int(parked_count), "parked": int(parked_count)}

        return await self._run(read)
