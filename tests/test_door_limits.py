"""Rate limits and idempotency: the building blocks with a fake clock, then the app under concurrent requests."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from door.app import create_app
from door.idempotency import IdempotencyConflict, IdempotencyStore, StoredResponse, request_fingerprint
from door.ratelimit import RateLimiter
from tests.doubles.door_sessions import RecordingSessionCreator
from tests.doubles.door_world import (
    KEY_ALL,
    KEY_OTHER_CLIENT,
    SALES_AGENT,
    SUPPORT_AGENT,
    FakeClock,
    feather_headers,
    make_settings,
    revdesk_headers,
    revdesk_path,
)

# --- the token bucket --------------------------------------------------------------------------------------


def test_bucket_allows_a_burst_of_the_minute_then_refills_evenly() -> None:
    clock = FakeClock()
    limiter = RateLimiter(6, clock=clock)  # one token every 10 s
    assert [limiter.acquire("k") for _ in range(6)] == [None] * 6
    assert limiter.acquire("k") == 10
    clock.advance(4)
    assert limiter.acquire("k") == 6
    clock.advance(6)
    assert limiter.acquire("k") is None
    assert limiter.acquire("k") == 10


def test_bucket_never_exceeds_its_capacity() -> None:
    clock = FakeClock()
    limiter = RateLimiter(3, clock=clock)
    clock.advance(3600)
    assert [limiter.acquire("k") is None for _ in range(4)] == [True, True, True, False]


def test_buckets_are_per_key() -> None:
    limiter = RateLimiter(1, clock=FakeClock())
    assert limiter.acquire("a") is None
    assert limiter.acquire("a") == 60
    assert limiter.acquire("b") is None


# --- the idempotency store ---------------------------------------------------------------------------------


def _producer(counter: list[int], status: int = 200) -> Callable[[], Awaitable[StoredResponse]]:
    async def produce() -> StoredResponse:
        counter.append(1)
        return StoredResponse(status, {"n": len(counter)})

    return produce


async def test_same_key_same_request_replays() -> None:
    store, made = IdempotencyStore(60, clock=FakeClock()), []
    first = await store.run("client", "k", "fp", _producer(made))
    second = await store.run("client", "k", "fp", _producer(made))
    assert first == (StoredResponse(200, {"n": 1}), False)
    assert second == (StoredResponse(200, {"n": 1}), True)
    assert len(made) == 1


async def test_same_key_other_request_conflicts() -> None:
    store, made = IdempotencyStore(60, clock=FakeClock()), []
    await store.run("client", "k", "fp-1", _producer(made))
    with pytest.raises(IdempotencyConflict):
        await store.run("client", "k", "fp-2", _producer(made))
    assert len(made) == 1


async def test_keys_are_scoped_per_client_and_expire() -> None:
    clock = FakeClock()
    store, made = IdempotencyStore(60, clock=clock), []
    await store.run("client-a", "k", "fp", _producer(made))
    _, replayed = await store.run("client-b", "k", "fp", _producer(made))
    assert not replayed and len(made) == 2
    clock.advance(59)
    assert (await store.run("client-a", "k", "fp", _producer(made)))[1] is True
    clock.advance(2)
    assert (await store.run("client-a", "k", "other", _producer(made)))[1] is False
    assert len(made) == 3


async def test_refusals_are_not_stored() -> None:
    store, made = IdempotencyStore(60, clock=FakeClock()), []
    assert (await store.run("c", "k", "fp", _producer(made, status=503)))[0].status_code == 503
    assert (await store.run("c", "k", "fp", _producer(made)))[0].status_code == 200
    assert len(store) == 1


async def test_the_store_is_bounded() -> None:
    store, made = IdempotencyStore(60, clock=FakeClock(), max_entries=3), []
    for key in "abcd":
        await store.run("c", key, "fp", _producer(made))
    assert len(store) == 3
    assert (await store.run("c", "a", "fp", _producer(made)))[1] is False


def test_fingerprint_separates_its_parts() -> None:
    assert request_fingerprint("POST", "/a", b"bc") != request_fingerprint("POST", "/ab", b"c")
    assert request_fingerprint("post", "/a", b"") == request_fingerprint("POST", "/a", b"")


# --- the app under concurrent requests ---------------------------------------------------------------------


@dataclass
class Door:
    client: httpx.AsyncClient
    creator: RecordingSessionCreator
    clock: FakeClock
    app: FastAPI


async def _door(tmp_path: Path, **settings: object) -> AsyncIterator[Door]:
    creator, clock = RecordingSessionCreator(), FakeClock()
    app = create_app(make_settings(tmp_path, **settings), session_creator=creator, clock=clock)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://door.test") as client:
        yield Door(client, creator, clock, app)


@pytest.fixture
async def door(tmp_path: Path) -> AsyncIterator[Door]:
    async for d in _door(tmp_path):
        yield d


@pytest.fixture
async def limited_door(tmp_path: Path) -> AsyncIterator[Door]:
    async for d in _door(tmp_path, DOOR_RATE_LIMIT_PER_MINUTE=10):
        yield d


async def _when(condition: Callable[[], bool], what: str) -> None:
    """Yield to the loop until `condition()` holds; generous bound, only to fail instead of hanging."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


async def test_parallel_identical_requests_with_one_key_make_one_session(door: Door) -> None:
    parallel = 40
    door.creator.gate = asyncio.Event()
    idempotency = door.app.state.door.idempotency
    requests = [
        asyncio.create_task(
            door.client.post(revdesk_path(SUPPORT_AGENT), headers=revdesk_headers(idempotency_key="once"))
        )
        for _ in range(parallel)
    ]
    # Hold the first request inside session creation until every other one is queued on the key.
    await _when(lambda: idempotency.in_flight("console", "once") == parallel, "all requests queued on the key")
    door.creator.gate.set()
    responses = await asyncio.gather(*requests)

    assert [r.status_code for r in responses] == [200] * parallel
    assert len(door.creator.sessions) == 1
    assert len({r.text for r in responses}) == 1
    replayed = sorted(r.headers["Idempotent-Replayed"] for r in responses)
    assert replayed == ["false"] + ["true"] * (parallel - 1)
    assert idempotency.in_flight("console", "once") == 0


async def test_parallel_conflicting_requests_with_one_key(door: Door) -> None:
    door.creator.gate = asyncio.Event()
    idempotency = door.app.state.door.idempotency
    tasks = [
        asyncio.create_task(door.client.post(revdesk_path(agent), headers=revdesk_headers(idempotency_key="mixed")))
        for agent in [SUPPORT_AGENT] * 5 + [SALES_AGENT] * 5
    ]
    await _when(lambda: idempotency.in_flight("console", "mixed") == 10, "all requests queued on the key")
    door.creator.gate.set()
    responses = await asyncio.gather(*tasks)
    statuses = sorted(r.status_code for r in responses)
    assert len(door.creator.sessions) == 1
    winner = door.creator.sessions[0].agent_id
    assert statuses == [200] * 5 + [409] * 5
    assert all((r.status_code == 200) == (uuid.UUID(str(r.request.url).split("/")[-2]) == winner) for r in responses)
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 409} == {"idempotency_conflict"}


async def test_same_idempotency_key_from_another_client_is_not_a_replay(door: Door) -> None:
    mine = await door.client.post(revdesk_path(SUPPORT_AGENT), headers=revdesk_headers(KEY_ALL, "shared"))
    theirs = await door.client.post(revdesk_path(SUPPORT_AGENT), headers=revdesk_headers(KEY_OTHER_CLIENT, "shared"))
    assert mine.status_code == theirs.status_code == 200
    assert theirs.headers["Idempotent-Replayed"] == "false"
    assert mine.json()["data"]["token"] != theirs.json()["data"]["token"]
    assert len(door.creator.sessions) == 2


async def test_idempotency_keys_expire(door: Door) -> None:
    first = await door.client.post(revdesk_path(SUPPORT_AGENT), headers=revdesk_headers(idempotency_key="ttl"))
    door.clock.advance(86_400 - 1)
    again = await door.client.post(revdesk_path(SUPPORT_AGENT), headers=revdesk_headers(idempotency_key="ttl"))
    door.clock.advance(2)
    later = await door.client.post(revdesk_path(SUPPORT_AGENT), headers=revdesk_headers(idempotency_key="ttl"))
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert later.headers["Idempotent-Replayed"] == "false" and later.json() != first.json()
    assert len(door.creator.sessions) == 2


async def test_a_refused_request_can_be_retried_with_the_same_key(door: Door) -> None:
    door.creator.fail_next = 1
    failed = await door.client.post(revdesk_path(SUPPORT_AGENT), headers=revdesk_headers(idempotency_key="retry"))
    retried = await door.client.post(revdesk_path(SUPPORT_AGENT), headers=revdesk_headers(idempotency_key="retry"))
    assert (failed.status_code, retried.status_code) == (503, 200)
    assert retried.headers["Idempotent-Replayed"] == "false"


async def test_parallel_requests_without_a_key_each_make_a_session(door: Door) -> None:
    responses = await asyncio.gather(
        *(door.client.post(revdesk_path(SUPPORT_AGENT), headers=revdesk_headers()) for _ in range(20))
    )
    assert [r.status_code for r in responses] == [200] * 20
    assert "Idempotent-Replayed" not in responses[0].headers
    assert len({r.json()["data"]["room_name"] for r in responses}) == 20
    assert len({s.session_id for s in door.creator.sessions}) == 20


async def test_rate_limit_under_concurrency(limited_door: Door) -> None:
    door = limited_door
    responses = await asyncio.gather(
        *(
            door.client.post("/v1/voice/web-call", json={"agent_id": str(SUPPORT_AGENT)}, headers=feather_headers())
            if i % 2
            else door.client.post(revdesk_path(SUPPORT_AGENT), headers=revdesk_headers())
            for i in range(30)
        )
    )
    ok = [r for r in responses if r.status_code == 200]
    limited = [r for r in responses if r.status_code == 429]
    assert (len(ok), len(limited)) == (10, 20)  # one bucket per key, shared by both routes
    assert len(door.creator.sessions) == 10
    assert {r.headers["Retry-After"] for r in limited} == {"6"}  # 10/min: a token every 6 s

    other = await door.client.post(revdesk_path(SUPPORT_AGENT), headers=revdesk_headers(KEY_OTHER_CLIENT))
    assert other.status_code == 200  # another key has its own bucket

    door.clock.advance(6)
    assert (await door.client.post(revdesk_path(SUPPORT_AGENT), headers=revdesk_headers())).status_code == 200
    assert (await door.client.post(revdesk_path(SUPPORT_AGENT), headers=revdesk_headers())).status_code == 429


async def test_unauthenticated_requests_do_not_spend_a_keys_budget(limited_door: Door) -> None:
    for _ in range(20):
        assert (await limited_door.client.post(revdesk_path(SUPPORT_AGENT))).status_code == 401
    assert (await limited_door.client.post(revdesk_path(SUPPORT_AGENT), headers=revdesk_headers())).status_code == 200
