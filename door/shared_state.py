"""Rate-limit buckets and idempotency entries in the records database, shared by every door replica.

`DOOR_SHARED_STATE=database` selects this module (in-process state, door/ratelimit.py and door/idempotency.py,
is the default for one replica). Without it a retry that lands on another replica mints a second session and
each replica grants a key its whole rate limit. PostgreSQL is what several hosts share; SQLite works for
replicas on one host. Redis would add a second stateful service to run for two small tables the records
database already holds, and its latency advantage is invisible next to the session row every call writes.

Both operations are single short transactions, run in worker threads (the engine is synchronous):

- rate limit: one upsert that refills and spends a token atomically (`INSERT … ON CONFLICT DO UPDATE …
  RETURNING`), so concurrent requests on any replica can never spend the same token twice.
- idempotency: the first request inserts a pending entry (`ON CONFLICT DO NOTHING` decides the winner), mints,
  then stores its response; the others, on any replica, poll until the response is stored and replay it.
  A pending entry carries a lease: if its replica dies mid-request the key becomes usable again after
  `LEASE_S`. Refusals are not stored (the entry is deleted), as in the in-process store.

Times are wall-clock epoch seconds, compared across hosts: replica clocks must be NTP-synchronised (a skew
of a second only shifts a bucket's refill by a second).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import anyio.to_thread
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from door.idempotency import IdempotencyConflict, StoredResponse
from records.schema import door_idempotency, door_rate_buckets

# A pending entry older than this belongs to a replica that died mid-request; minting takes milliseconds.
LEASE_S = 30.0
# Waiters poll the entry; the first answer usually lands within one or two polls.
POLL_FIRST_S = 0.01
POLL_MAX_S = 0.2
# Expired entries of other keys are deleted at most this often per replica.
PURGE_EVERY_S = 60.0

# The tables are part of the records database's schema (records/schema.py), which its migrations build.
idempotency_entries = door_idempotency
rate_buckets = door_rate_buckets


def shared_engine(database_url: str) -> Engine:
    """The records database with its schema current (this module's tables come with the records migrations)."""
    from records.engine import create_engine
    from records.migrate import upgrade

    upgrade(database_url)
    # Enough connections for the worker threads that run these statements under load (anyio's default is 40);
    # SQLite's writers queue on its file lock whatever the pool.
    return create_engine(database_url, pool_size=20, max_overflow=20)


def _insert(engine: Engine, table: sa.Table) -> Any:
    return postgresql.insert(table) if engine.dialect.name == "postgresql" else sqlite.insert(table)


class DatabaseRateLimiter:
    """The token bucket of door/ratelimit.py, one row per API key."""

    def __init__(self, engine: Engine, per_minute: int, *, clock: Callable[[], float] = time.time) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self._engine = engine
        self._capacity = float(per_minute)
        self._refill_per_s = per_minute / 60.0
        self._clock = clock
        postgres = engine.dialect.name == "postgresql"
        self._least = sa.func.least if postgres else sa.func.min
        self._greatest = sa.func.greatest if postgres else sa.func.max

    async def acquire_async(self, key: str) -> int | None:
        return await anyio.to_thread.run_sync(self.acquire, key)

    def acquire(self, key: str) -> int | None:
        """Spend one token of `key`: None when allowed, else the whole seconds to wait (Retry-After)."""
        now = self._clock()
        b = rate_buckets.c
        elapsed = self._greatest(sa.literal(0.0), sa.literal(now) - b.updated)
        refilled = self._least(sa.literal(self._capacity), b.tokens + elapsed * self._refill_per_s)
        statement = (
            _insert(self._engine, rate_buckets)
            .values(name=key, tokens=self._capacity - 1.0, updated=now, granted=True)
            .on_conflict_do_update(
                index_elements=[b.name],
                set_={
                    "tokens": sa.case((refilled >= 1.0, refilled - 1.0), else_=refilled),
                    # A replica whose clock lags must not move the bucket back and refill it twice.
                    "updated": self._greatest(b.updated, sa.literal(now)),
                    "granted": refilled >= 1.0,
                },
            )
            .returning(b.tokens, b.granted)
        )
        with self._engine.begin() as conn:
            row = conn.execute(statement).one()
        if row.granted:
            return None
        return max(1, math.ceil((1.0 - float(row.tokens)) / self._refill_per_s))


Claim = Literal["mine", "conflict", "wait", "replay", "again"]


class DatabaseIdempotency:
    """The contract of door/idempotency.py's `IdempotencyStore.run`, across replicas."""

    def __init__(self, engine: Engine, ttl_s: float, *, clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self._ttl_s = ttl_s
        self._clock = clock
        self._purged_at = 0.0

    def _claim(self, scope: str, key: str, fingerprint: str) -> tuple[Claim, StoredResponse | None]:
        now = self._clock()
        e = idempotency_entries.c
        slot = sa.and_(e.scope == scope, e.key == key)
        with self._engine.begin() as conn:
            self._purge(conn, now)
            stale = sa.or_(e.expires_at <= now, sa.and_(e.status_code.is_(None), e.lease_until <= now))
            conn.execute(sa.delete(idempotency_entries).where(slot, stale))
            inserted = conn.execute(
                _insert(self._engine, idempotency_entries)
                .values(
                    scope=scope,
                    key=key,
                    fingerprint=fingerprint,
                    lease_until=now + LEASE_S,
                    expires_at=now + self._ttl_s,
                )
                .on_conflict_do_nothing(index_elements=[e.scope, e.key])
                # RETURNING, not rowcount: drivers do not agree on the rowcount of an upsert that did nothing.
                .returning(e.scope)
            ).first()
            if inserted is not None:
                return "mine", None
            row = conn.execute(sa.select(e.fingerprint, e.status_code, e.body).where(slot)).first()
        if row is None:
            return "again", None  # its owner gave it up between our insert and our read
        if row.fingerprint != fingerprint:
            return "conflict", None
        if row.status_code is None:
            return "wait", None
        return "replay", StoredResponse(int(row.status_code), json.loads(row.body))

    def _purge(self, conn: Connection, now: float) -> None:
        if now - self._purged_at < PURGE_EVERY_S:
            return
        self._purged_at = now
        conn.execute(sa.delete(idempotency_entries).where(idempotency_entries.c.expires_at <= now))

    def _finish(self, scope: str, key: str, response: StoredResponse | None) -> None:
        e = idempotency_entries.c
        slot = sa.and_(e.scope == scope, e.key == key, e.status_code.is_(None))
        with self._engine.begin() as conn:
            if response is None or not 200 <= response.status_code < 300:
                conn.execute(sa.delete(idempotency_entries).where(slot))
                return
            conn.execute(
                sa.update(idempotency_entries)
                .where(slot)
                .values(
                    status_code=response.status_code,
                    body=json.dumps(response.body),
                    expires_at=self._clock() + self._ttl_s,
                )
            )

    async def run(
        self,
        scope: str,
        key: str,
        fingerprint: str,
        produce: Callable[[], Awaitable[StoredResponse]],
    ) -> tuple[StoredResponse, bool]:
        """`(response, replayed)`; raises `IdempotencyConflict` when `key` is used for another request."""
        pause = POLL_FIRST_S
        while True:
            claim, stored = await anyio.to_thread.run_sync(self._claim, scope, key, fingerprint)
            if claim == "replay":
                assert stored is not None
                return stored, True
            if claim == "conflict":
                raise IdempotencyConflict
            if claim == "mine":
                break
            if claim == "wait":
                await asyncio.sleep(pause)
                pause = min(pause * 2, POLL_MAX_S)
        try:
            response = await produce()
        except BaseException:
            # A failed request leaves the key free for a retry, as a refusal does.
            await anyio.to_thread.run_sync(self._finish, scope, key, None)
            raise
        await anyio.to_thread.run_sync(self._finish, scope, key, response)
        return response, False
