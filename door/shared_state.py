"""Rate-limit buckets and idempotency entries in the records database, shared by every door replica.

`DOOR_SHARED_STATE=database` selects this module (in-process state, door/ratelimit.py and door/idempotency.py,
is the default for one replica). Without it a retry that lands on another replica mints a second session and
each replica grants a key its whole rate limit. PostgreSQL is what several hosts share; SQLite works for
replicas on one host. Redis would add a second stateful service to run for two small tables the records
database already holds, and its latency advantage is invisible next to the session row every call writes.

- rate limit: one upsert that refills and spends a token atomically (`INSERT … ON CONFLICT DO UPDATE …
  RETURNING`), so concurrent requests on any replica can never spend the same token twice.
- idempotency: the first request inserts a pending entry (`ON CONFLICT DO NOTHING` decides the winner), mints,
  then stores its response; the others, on any replica, poll until the response is stored and replay it.
  A pending entry carries a lease: if its replica dies mid-request the key becomes usable again after
  `LEASE_S`. Refusals are not stored (the entry is deleted), as in the in-process store.

Each operation is written once, as the statements it runs, and door/database.py runs it: on PostgreSQL on an asyncio
pool (no worker thread, one round trip per statement; the idempotency claim in one transaction), on SQLite in a
worker thread as one transaction of the SQLAlchemy engine. The rate limiter's PostgreSQL connections
commit without waiting for the WAL to reach the disk (`synchronous_commit=off`, per connection): a database crash
can forget the tokens spent in its last fraction of a second, which only gives keys those requests back, and each
request saves a disk flush. Idempotency entries stay durable: a forgotten one would let a retry mint a second call.

Times are wall-clock epoch seconds, compared across hosts: replica clocks must be NTP-synchronised (a skew
of a second only shifts a bucket's refill by a second).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from door.database import Database, Statement, Steps
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
    # On PostgreSQL requests go through the asyncio pools below; the engine only serves synchronous callers.
    return create_engine(database_url)


class DatabaseRateLimiter:
    """The token bucket of door/ratelimit.py, one row per API key."""

    def __init__(self, engine: Engine, per_minute: int, *, clock: Callable[[], float] = time.time) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self._database = Database(engine, postgres_options="-c synchronous_commit=off")
        self._capacity = float(per_minute)
        self._refill_per_s = per_minute / 60.0
        self._clock = clock
        least = sa.func.least if self._database.postgresql else sa.func.min
        greatest = sa.func.greatest if self._database.postgresql else sa.func.max
        b = rate_buckets.c
        now = sa.bindparam("now", type_=sa.Float)
        elapsed = greatest(sa.literal(0.0), now - b.updated)
        refilled = least(sa.literal(self._capacity), b.tokens + elapsed * self._refill_per_s)
        self._spend_token = Statement(
            self._database.insert(rate_buckets)
            .values(
                name=sa.bindparam("bucket", type_=b.name.type), tokens=self._capacity - 1.0, updated=now, granted=True
            )
            .on_conflict_do_update(
                index_elements=[b.name],
                set_={
                    "tokens": sa.case((refilled >= 1.0, refilled - 1.0), else_=refilled),
                    # A replica whose clock lags must not move the bucket back and refill it twice.
                    "updated": greatest(b.updated, now),
                    "granted": refilled >= 1.0,
                },
            )
            .returning(b.tokens, b.granted)
        )

    async def acquire_async(self, key: str) -> int | None:
        return await self._database.run(lambda: self._spend(key))

    def acquire(self, key: str) -> int | None:
        """Spend one token of `key`: None when allowed, else the whole seconds to wait (Retry-After)."""
        return self._database.run_sync(self._spend(key))

    def _spend(self, key: str) -> Steps[int | None]:
        row = yield self._spend_token, {"bucket": key, "now": self._clock()}
        if row.granted:
            return None
        return max(1, math.ceil((1.0 - float(row.tokens)) / self._refill_per_s))

    async def aclose(self) -> None:
        await self._database.aclose()


Claim = Literal["mine", "conflict", "wait", "replay", "again"]


class DatabaseIdempotency:
    """The contract of door/idempotency.py's `IdempotencyStore.run`, across replicas."""

    def __init__(self, engine: Engine, ttl_s: float, *, clock: Callable[[], float] = time.time) -> None:
        self._database = Database(engine)
        self._ttl_s = ttl_s
        self._clock = clock
        self._purged_at = 0.0
        e = idempotency_entries.c
        now = sa.bindparam("now", type_=sa.Float)
        slot = sa.and_(
            e.scope == sa.bindparam("slot_scope", type_=e.scope.type),
            e.key == sa.bindparam("slot_key", type_=e.key.type),
        )
        pending = sa.and_(slot, e.status_code.is_(None))
        self._purge = Statement(sa.delete(idempotency_entries).where(e.expires_at <= now))
        stale = sa.or_(e.expires_at <= now, sa.and_(e.status_code.is_(None), e.lease_until <= now))
        self._delete_stale = Statement(sa.delete(idempotency_entries).where(slot, stale))
        self._insert_pending = Statement(
            self._database.insert(idempotency_entries)
            .values(
                scope=sa.bindparam("slot_scope", type_=e.scope.type),
                key=sa.bindparam("slot_key", type_=e.key.type),
                fingerprint=sa.bindparam("claim_fingerprint", type_=e.fingerprint.type),
                lease_until=sa.bindparam("claim_lease_until", type_=sa.Float),
                expires_at=sa.bindparam("claim_expires_at", type_=sa.Float),
            )
            .on_conflict_do_nothing(index_elements=[e.scope, e.key])
            # RETURNING, not rowcount: drivers do not agree on the rowcount of an upsert that did nothing.
            .returning(e.scope)
        )
        self._select = Statement(sa.select(e.fingerprint, e.status_code, e.body).where(slot))
        self._delete_pending = Statement(sa.delete(idempotency_entries).where(pending))
        self._store_response = Statement(
            sa.update(idempotency_entries)
            .where(pending)
            .values(
                status_code=sa.bindparam("response_status", type_=sa.Integer),
                body=sa.bindparam("response_body", type_=e.body.type),
                expires_at=sa.bindparam("response_expires_at", type_=sa.Float),
            )
        )

    def _claim(self, scope: str, key: str, fingerprint: str) -> Steps[tuple[Claim, StoredResponse | None]]:
        now = self._clock()
        slot = {"slot_scope": scope, "slot_key": key}
        if now - self._purged_at >= PURGE_EVERY_S:
            self._purged_at = now
            yield self._purge, {"now": now}
        yield self._delete_stale, {**slot, "now": now}
        inserted = yield (
            self._insert_pending,
            {
                **slot,
                "claim_fingerprint": fingerprint,
                "claim_lease_until": now + LEASE_S,
                "claim_expires_at": now + self._ttl_s,
            },
        )
        if inserted is not None:
            return "mine", None
        row = yield self._select, slot
        if row is None:
            return "again", None  # its owner gave it up between our insert and our read
        if row.fingerprint != fingerprint:
            return "conflict", None
        if row.status_code is None:
            return "wait", None
        return "replay", StoredResponse(int(row.status_code), json.loads(row.body))

    def _finish(self, scope: str, key: str, response: StoredResponse | None) -> Steps[None]:
        slot = {"slot_scope": scope, "slot_key": key}
        if response is None or not 200 <= response.status_code < 300:
            yield self._delete_pending, slot
            return
        yield (
            self._store_response,
            {
                **slot,
                "response_status": response.status_code,
                "response_body": json.dumps(response.body),
                "response_expires_at": self._clock() + self._ttl_s,
            },
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
            claim, stored = await self._database.run(lambda: self._claim(scope, key, fingerprint), transaction=True)
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
            await self._database.run(lambda: self._finish(scope, key, None))
            raise
        await self._database.run(lambda: self._finish(scope, key, response))
        return response, False

    async def aclose(self) -> None:
        await self._database.aclose()
