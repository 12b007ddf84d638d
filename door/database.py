"""How the door runs its per-request statements: on PostgreSQL on an asyncio connection pool (psycopg's async
driver), on SQLite in a worker thread on the records' SQLAlchemy engine.

Each operation is written once, as the statements it runs (`Steps`: a generator that yields a statement with its
parameters and is sent back the statement's first row, or None), and `Database.run` runs it on either.

Why not the records' SQLAlchemy engine on PostgreSQL too: it is synchronous, so each statement took a worker-thread
hop, and under load those threads fought the event loop for the GIL. A rate-limit statement plus a session row cost
~8 ms of CPU that way (a pool checkout with its pre-ping, BEGIN and COMMIT around each; measured alone, without the
HTTP side), against ~0.5 ms on this pool; SQLAlchemy's own asyncio engine measured ~2 ms. The statements are still
SQLAlchemy Core on records/schema.py's tables, compiled once for psycopg (`Statement`). SQLite has no asyncio
driver, and its writes are short: one thread hop per operation, the operation one transaction.

PostgreSQL connections are in autocommit mode: a single statement is its own transaction and costs one round trip
(`Database.run(..., transaction=True)` runs several in one). psycopg prepares a statement server-side once a
connection has run it a few times. There is no ping per checkout: a connection whose server went away (a restart, a
failover) is found out when it is used; the operation then runs once more on a new connection and the other idle
ones, likely dead too, are closed. So every operation given to `run` must be safe to repeat: the door's are
(spending a rate-limit token twice only makes a client wait a little longer, a session insert is idempotent on its
id, an idempotency claim finds its own entry).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator, Mapping
from functools import cached_property
from typing import Any, NamedTuple, TypeVar

import anyio.to_thread
import psycopg
import sqlalchemy as sa
from psycopg import AsyncConnection
from psycopg.conninfo import make_conninfo
from psycopg.pq import TransactionStatus
from psycopg.rows import namedtuple_row
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.sql.dml import UpdateBase

T = TypeVar("T")
Connection = AsyncConnection[NamedTuple]

# Connections per pool. A door's requests each hold one for a single round trip (~0.2 ms), so a few carry hundreds of
# requests per second; more only add PostgreSQL backends competing for the same cores (measured: 4 beat 10 and 20).
DEFAULT_SIZE = 4
CONNECT_TIMEOUT_S = 5

_DIALECT = psycopg_dialect.dialect()  # type: ignore[no-untyped-call]  # SQLAlchemy's dialect classes are untyped


def is_postgresql(database_url: str) -> bool:
    return make_url(database_url).get_backend_name() == "postgresql"


class Statement:
    """A SQLAlchemy Core statement with named bind parameters, runnable by SQLAlchemy or, compiled once, by psycopg.

    Compiled on first use by psycopg: a statement built for SQLite (its own upsert syntax) never is.
    """

    def __init__(self, clause: UpdateBase | sa.Select[Any]) -> None:
        self.clause = clause

    @cached_property
    def _compiled(self) -> tuple[str, dict[str, Any], dict[str, Callable[[Any], Any]]]:
        compiled = self.clause.compile(dialect=_DIALECT)
        # The columns' own conversions (JSON to text, aware UTC datetimes), as SQLAlchemy would apply them.
        processors: dict[str, Callable[[Any], Any]] = {
            name: processor
            for bind, name in compiled.bind_names.items()
            if (processor := bind.type.dialect_impl(_DIALECT).bind_processor(_DIALECT)) is not None
        }
        # `compiled.params`: values SQLAlchemy bound itself (literals in the expression); callers fill in the rest.
        return str(compiled), dict(compiled.params), processors

    @property
    def sql(self) -> str:
        return self._compiled[0]

    def bind(self, params: Mapping[str, Any]) -> dict[str, Any]:
        _, defaults, processors = self._compiled
        values = {**defaults, **params}
        for name, processor in processors.items():
            values[name] = processor(values[name])
        return values


async def fetch_first(connection: Connection, statement: Statement, params: Mapping[str, Any]) -> Any:
    """The statement's first row (attribute access by column name), or None when it returned none."""
    cursor = await connection.execute(statement.sql, statement.bind(params))
    return await cursor.fetchone() if cursor.description is not None else None


class AsyncPostgres:
    """At most `size` connections to `database_url`, opened when first needed and kept open."""

    def __init__(self, database_url: str, *, size: int = DEFAULT_SIZE, options: str | None = None) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        # libpq takes the URL without SQLAlchemy's driver suffix; it carries the password, so it is never logged.
        url = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._conninfo = make_conninfo(url, options=options) if options else url
        self._slots = asyncio.Semaphore(size)
        self._idle: list[Connection] = []
        self._closed = False

    async def run(self, operation: Callable[[Connection], Awaitable[T]]) -> T:
        """`operation` on a connection of the pool; run again on a new connection if a reused one turns out dead."""
        async with self._slots:
            connection, reused = await self._take()
            try:
                return await self._attempt(connection, operation)
            except psycopg.OperationalError:
                if not (reused and connection.broken):
                    raise
            # The server dropped the connections we held (restarted, failed over): start afresh.
            await self._close_idle()
            return await self._attempt(await self._connect(), operation)

    async def _attempt(self, connection: Connection, operation: Callable[[Connection], Awaitable[T]]) -> T:
        try:
            result = await operation(connection)
        except BaseException:
            await self._give_back(connection)
            raise
        await self._give_back(connection)
        return result

    async def _take(self) -> tuple[Connection, bool]:
        if self._closed:
            raise RuntimeError("the pool is closed")
        if self._idle:
            return self._idle.pop(), True
        return await self._connect(), False

    async def _connect(self) -> Connection:
        return await AsyncConnection.connect(
            self._conninfo, autocommit=True, row_factory=namedtuple_row, connect_timeout=CONNECT_TIMEOUT_S
        )

    async def _give_back(self, connection: Connection) -> None:
        # Anything but an idle, healthy connection (a cancelled query, an unfinished transaction) is not reused.
        healthy = not connection.closed and connection.info.transaction_status == TransactionStatus.IDLE
        if healthy and not self._closed:
            self._idle.append(connection)
        else:
            await connection.close()

    async def _close_idle(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.close()

    async def aclose(self) -> None:
        """Close the idle connections; those in use are closed when their operation ends."""
        self._closed = True
        await self._close_idle()


# A statement and its parameters; the generator is sent the statement's first row (None when it returned none).
Step = tuple[Statement, dict[str, Any]]
Steps = Generator[Step, Any, T]


class Database:
    """Runs `Steps` against an engine's database: on PostgreSQL on an asyncio pool, else in a worker thread."""

    def __init__(self, engine: Engine, *, postgres_options: str | None = None) -> None:
        self.engine = engine
        self.postgresql = engine.dialect.name == "postgresql"
        self._pool: AsyncPostgres | None = None
        if self.postgresql:
            url = engine.url.render_as_string(hide_password=False)
            self._pool = AsyncPostgres(url, options=postgres_options)

    def insert(self, table: sa.Table) -> Any:
        """The dialect's own INSERT (with its `on_conflict_do_*`)."""
        return postgresql.insert(table) if self.postgresql else sqlite.insert(table)

    def run_sync(self, steps: Steps[T]) -> T:
        with self.engine.begin() as conn:
            row = None
            try:
                while True:
                    statement, params = steps.send(row)
                    result = conn.execute(statement.clause, params)
                    row = result.first() if result.returns_rows else None
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]  # a generator's return value is typed Any here

    async def run(self, make_steps: Callable[[], Steps[T]], *, transaction: bool = False) -> T:
        """The steps' result; `make_steps` is called again if the pool has to retry on a new connection."""
        if self._pool is None:
            return await anyio.to_thread.run_sync(lambda: self.run_sync(make_steps()))

        async def operation(connection: Connection) -> T:
            if not transaction:
                return await _drive(connection, make_steps())
            async with connection.transaction():
                return await _drive(connection, make_steps())

        return await self._pool.run(operation)

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
        await anyio.to_thread.run_sync(self.engine.dispose)


async def _drive(connection: Connection, steps: Steps[T]) -> T:
    row = None
    try:
        while True:
            statement, params = steps.send(row)
            row = await fetch_first(connection, statement, params)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]  # a generator's return value is typed Any here
