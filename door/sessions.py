"""Where the door records the session a web call belongs to, behind a small protocol.

The door needs one thing from storage: create the session row before the browser joins, so the worker and
post-call processing find it. Any object with a `create_session(...)` method (sync or async) will do; the
default writes to `DATABASE_URL` one `INSERT … ON CONFLICT DO NOTHING` per call (`SessionWriter`): on PostgreSQL
on the door's asyncio pool, on SQLite in a worker thread, one writer at a time (`OneWriterAtATime`).

A mint returns only after its session row is committed, with PostgreSQL's `synchronous_commit` as the server has it
(durable by default): a browser must never hold a token whose session a crash could forget. Rows are not batched
across requests for the same reason; concurrent commits already share WAL flushes in PostgreSQL (group commit).
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

import anyio.to_thread
import sqlalchemy as sa

from contract.session_type import SessionType
from door.database import Database, Statement, Steps, is_postgresql
from door.settings import DoorSettings
from records.schema import sessions
from records.store import SessionStore, check_same_session, created_session_values


@runtime_checkable
class SessionCreator(Protocol):
    def create_session(
        self,
        session_id: uuid.UUID,
        session_type: SessionType,
        agent_id: uuid.UUID | None = None,
        team_id: uuid.UUID | None = None,
        context_variables: dict[str, Any] | None = None,
    ) -> Any: ...


async def create_session(
    creator: SessionCreator,
    *,
    session_id: uuid.UUID,
    session_type: SessionType,
    agent_id: uuid.UUID | None,
    team_id: uuid.UUID | None,
    context_variables: dict[str, Any] | None,
) -> None:
    """Call `creator.create_session` whether it is a coroutine function or blocking (then off the loop)."""
    kwargs: dict[str, Any] = {
        "agent_id": agent_id,
        "team_id": team_id,
        "context_variables": context_variables,
    }
    method = creator.create_session
    if inspect.iscoroutinefunction(method):
        await method(session_id, session_type, **kwargs)
        return
    result = await anyio.to_thread.run_sync(lambda: method(session_id, session_type, **kwargs))
    if inspect.isawaitable(result):
        await result


def default_session_creator(settings: DoorSettings) -> SessionCreator:
    """The session writer for `DATABASE_URL`, its schema brought current first (as the worker does)."""
    # Imported here: a door given its own creator (tests, another store) needs no migrations (alembic).
    from records.migrate import upgrade

    upgrade(settings.database_url)
    if settings.database_url.startswith("sqlite"):
        return OneWriterAtATime(SessionWriter(Database(_sqlite_engine_without_commit_fsync(settings.database_url))))
    if is_postgresql(settings.database_url):
        from records.engine import create_engine

        return SessionWriter(Database(create_engine(settings.database_url)))
    store: SessionCreator = SessionStore.from_settings(settings)
    return store


def _sqlite_engine_without_commit_fsync(database_url: str) -> Any:
    """The records engine, with `synchronous=NORMAL` on the door's own connections.

    In WAL mode that skips the fsync of every commit (4 ms on the benchmark's disk, which capped the door at
    ~150 calls per second) and stays corruption-free; a power loss (not a crash of the process) can lose the
    last rows, i.e. the records of test calls minted in the last moments. The worker's connections keep
    SQLite's default; a fleet that cannot accept this runs on PostgreSQL.
    """
    from records.engine import create_engine

    engine = create_engine(database_url)

    @sa.event.listens_for(engine, "connect")
    def _no_fsync_per_commit(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    return engine


class OneWriterAtATime:
    """Session rows written one at a time, for SQLite.

    SQLite has one writer. Concurrent requests each taking a worker thread into BEGIN IMMEDIATE make all but one
    wait in SQLite's busy handler, which sleeps in steps of up to 100 ms: under 50 concurrent calls that was
    most of the door's p99. Queued here instead, each write starts the moment the previous one committed, and
    no worker thread is parked on the lock. PostgreSQL writers do not contend, so they are not wrapped.
    """

    def __init__(self, inner: SessionCreator) -> None:
        self._inner = inner
        self._lock = asyncio.Lock()

    async def create_session(
        self,
        session_id: uuid.UUID,
        session_type: SessionType,
        agent_id: uuid.UUID | None = None,
        team_id: uuid.UUID | None = None,
        context_variables: dict[str, Any] | None = None,
    ) -> None:
        async with self._lock:
            await create_session(
                self._inner,
                session_id=session_id,
                session_type=session_type,
                agent_id=agent_id,
                team_id=team_id,
                context_variables=context_variables,
            )

    async def aclose(self) -> None:
        closer = getattr(self._inner, "aclose", None)
        if closer is not None:
            await closer()


class SessionWriter:
    """Session rows, one `INSERT … ON CONFLICT DO NOTHING` each (no read before, no record built after).

    The row is `records.store.SessionStore.create_session`'s (`created_session_values`), and so is the contract:
    creating a session again is a no-op with the same type, agent and team, else `SessionConflictError`.
    """

    def __init__(self, database: Database) -> None:
        self._database = database
        columns = list(_created_values(uuid.uuid4(), SessionType.TEST, agent_id=uuid.uuid4(), team_id=None, seeds=None))
        # Parameters are not named after their columns: SQLAlchemy reserves those names in an INSERT's VALUES.
        self._insert = Statement(
            database.insert(sessions)
            .values({column: sa.bindparam(f"new_{column}", type_=sessions.c[column].type) for column in columns})
            .on_conflict_do_nothing(index_elements=[sessions.c.id])
            .returning(sessions.c.id)
        )
        self._existing = Statement(
            sa.select(sessions.c.session_type, sessions.c.agent_id, sessions.c.team_id).where(
                sessions.c.id == sa.bindparam("session_id", type_=sessions.c.id.type)
            )
        )

    async def create_session(
        self,
        session_id: uuid.UUID,
        session_type: SessionType,
        agent_id: uuid.UUID | None = None,
        team_id: uuid.UUID | None = None,
        context_variables: dict[str, Any] | None = None,
    ) -> None:
        values = _created_values(session_id, session_type, agent_id=agent_id, team_id=team_id, seeds=context_variables)
        await self._database.run(lambda: self._create(values))

    def _create(self, values: dict[str, Any]) -> Steps[None]:
        inserted = yield self._insert, {f"new_{column}": value for column, value in values.items()}
        if inserted is not None:
            return
        existing = yield self._existing, {"session_id": values["id"]}
        if existing is None:  # deleted between the two statements: the call has no row, so it must not go ahead
            raise LookupError(f"session {values['id']} disappeared while it was being created")
        owners = ("session_type", "agent_id", "team_id")
        check_same_session({column: getattr(existing, column) for column in owners}, values)

    async def aclose(self) -> None:
        await self._database.aclose()


def _created_values(
    session_id: uuid.UUID,
    session_type: SessionType,
    *,
    agent_id: uuid.UUID | None,
    team_id: uuid.UUID | None,
    seeds: dict[str, Any] | None,
) -> dict[str, Any]:
    return created_session_values(
        session_id, session_type, datetime.now(UTC), agent_id=agent_id, team_id=team_id, context_variables=seeds
    )
