"""The database-backed rate limiter and idempotency store (door/shared_state.py) against SQLite and PostgreSQL:
the same behaviour as the in-process ones, with several "replicas" (stores on their own engines) at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator

import pytest
from sqlalchemy.engine import Engine

from door.idempotency import IdempotencyConflict, StoredResponse
from door.shared_state import DatabaseIdempotency, DatabaseRateLimiter, idempotency_entries, shared_engine
from tests.doubles.door_world import FakeClock
from tests.doubles.postgres import database_url, postgres_server, postgres_url  # noqa: F401 - pytest fixtures


@pytest.fixture
def engines(database_url: str) -> Iterator[tuple[Engine, Engine]]:  # noqa: F811 - the fixture imported above
    first, second = shared_engine(database_url), shared_engine(database_url)
    yield first, second
    first.dispose()
    second.dispose()


def _producer(made: list[int], status: int = 200, pause: float = 0.0) -> Callable[[], Awaitable[StoredResponse]]:
    async def produce() -> StoredResponse:
        made.append(1)
        await asyncio.sleep(pause)
        return StoredResponse(status, {"n": len(made)})

    return produce


async def test_concurrent_requests_on_two_replicas_make_one_response(engines: tuple[Engine, Engine]) -> None:
    replicas = [DatabaseIdempotency(engine, 60) for engine in engines]
    made: list[int] = []
    results = await asyncio.gather(
        *(replicas[i % 2].run("client", "k", "fp", _producer(made, pause=0.2)) for i in range(10))
    )
    assert len(made) == 1
    assert all(response == StoredResponse(200, {"n": 1}) for response, _ in results)
    assert sorted(replayed for _, replayed in results) == [False] + [True] * 9


async def test_conflicts_refusals_and_scopes(engines: tuple[Engine, Engine]) -> None:
    store = DatabaseIdempotency(engines[0], 60)
    made: list[int] = []
    await store.run("client", "k", "fp-1", _producer(made))
    with pytest.raises(IdempotencyConflict):
        await store.run("client", "k", "fp-2", _producer(made))
    assert (await store.run("other-client", "k", "fp-2", _producer(made)))[1] is False

    refused, _ = await store.run("client", "r", "fp", _producer(made, status=503))
    assert refused.status_code == 503
    assert (await store.run("client", "r", "fp", _producer(made)))[1] is False  # refusals are not stored
    assert len(made) == 4


async def test_entries_expire_and_dead_leases_are_taken_over(engines: tuple[Engine, Engine]) -> None:
    clock = FakeClock(now=1_700_000_000.0)
    store = DatabaseIdempotency(engines[0], 60, clock=clock)
    made: list[int] = []
    await store.run("c", "k", "fp", _producer(made))
    clock.advance(61)
    assert (await store.run("c", "k", "other", _producer(made)))[1] is False

    # A replica that died mid-request left a pending entry: usable again once its lease ran out.
    with engines[1].begin() as conn:
        conn.execute(
            idempotency_entries.insert().values(
                scope="c", key="orphan", fingerprint="fp", lease_until=clock.now + 30, expires_at=clock.now + 60
            )
        )
    clock.advance(31)
    response, replayed = await store.run("c", "orphan", "fp", _producer(made))
    assert not replayed and response.status_code == 200


def test_rate_limit_is_one_bucket_across_replicas(engines: tuple[Engine, Engine]) -> None:
    clock = FakeClock(now=1_700_000_000.0)
    limiters = [DatabaseRateLimiter(engine, 6, clock=clock) for engine in engines]  # a token every 10 s
    assert [limiters[i % 2].acquire("k") for i in range(7)] == [None] * 6 + [10]
    clock.advance(4)
    assert limiters[1].acquire("k") == 6
    clock.advance(6)
    assert limiters[0].acquire("k") is None
    assert limiters[1].acquire("k") == 10
    assert limiters[0].acquire("another") is None
    clock.advance(3600)
    assert [limiters[0].acquire("k") is None for _ in range(7)] == [True] * 6 + [False]  # never above capacity


async def test_concurrent_spending_never_exceeds_the_bucket(engines: tuple[Engine, Engine]) -> None:
    limiters = [DatabaseRateLimiter(engine, 10) for engine in engines]
    results = await asyncio.gather(*(limiters[i % 2].acquire_async("k") for i in range(30)))
    assert results.count(None) == 10
