"""Two door replicas on one PostgreSQL (`DOOR_SHARED_STATE=database`): a request retried on the other replica is
the same call, and an API key's rate limit is one budget across both. Real `voice-worker door` processes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa

from tests.doubles.door_process import DoorProcess, start_door
from tests.doubles.door_world import KEY_ALL, KEY_OTHER_CLIENT, SUPPORT_AGENT, revdesk_headers, revdesk_path
from tests.doubles.postgres import PostgresServer, postgres_server  # noqa: F401 - pytest fixture

RATE_PER_MINUTE = 10


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: PostgresServer,  # noqa: F811 - the fixture imported above
) -> Iterator[tuple[DoorProcess, DoorProcess, str]]:
    # One pair for the module (the tests use distinct API keys): a door takes seconds to start on a busy machine.
    database_url = postgres_server.create_database()
    tmp_path = tmp_path_factory.mktemp("replicas")
    settings = {
        "DATABASE_URL": database_url,
        "DOOR_SHARED_STATE": "database",
        "DOOR_RATE_LIMIT_PER_MINUTE": RATE_PER_MINUTE,
    }
    first = start_door(tmp_path, "door-a", **settings)
    try:
        second = start_door(tmp_path, "door-b", **settings)
        try:
            yield first, second, database_url
        finally:
            assert second.terminate() == 0
    finally:
        assert first.terminate() == 0
        postgres_server.drop_database(database_url)


def _sessions(database_url: str) -> list[uuid.UUID]:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            return [row[0] for row in conn.execute(sa.text("SELECT id FROM sessions"))]
    finally:
        engine.dispose()


async def _post_all(urls: list[str], key: str, idempotency_key: str | None) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30) as client:
        return await asyncio.gather(*(client.post(url, headers=revdesk_headers(key, idempotency_key)) for url in urls))


def test_one_idempotency_key_sent_to_both_replicas_at_once_is_one_session(
    replicas: tuple[DoorProcess, DoorProcess, str],
) -> None:
    first, second, database_url = replicas
    path = revdesk_path(SUPPORT_AGENT)
    urls = [f"{door.url}{path}" for door in (first, second) for _ in range(4)]
    responses = asyncio.run(_post_all(urls, KEY_ALL, "retry-on-any-replica"))

    assert [r.status_code for r in responses] == [200] * len(urls), [r.text for r in responses]
    assert len({r.text for r in responses}) == 1  # the same token, room and session from both replicas
    assert sorted(r.headers["Idempotent-Replayed"] for r in responses) == ["false"] + ["true"] * (len(urls) - 1)
    assert len(_sessions(database_url)) == 1  # the module's first test: nothing else has called yet

    # The key stays bound to that request on both replicas.
    other = httpx.post(
        f"{second.url}{revdesk_path(uuid.uuid4())}", headers=revdesk_headers(KEY_ALL, "retry-on-any-replica")
    )
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"
    assert len(_sessions(database_url)) == 1


def test_a_keys_rate_limit_holds_across_replicas(replicas: tuple[DoorProcess, DoorProcess, str]) -> None:
    first, second, database_url = replicas
    before = len(_sessions(database_url))
    path = revdesk_path(SUPPORT_AGENT)
    urls = [f"{(first, second)[i % 2].url}{path}" for i in range(3 * RATE_PER_MINUTE)]
    responses = asyncio.run(_post_all(urls, KEY_OTHER_CLIENT, None))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == RATE_PER_MINUTE and statuses.count(429) == 2 * RATE_PER_MINUTE, statuses
    assert all(
        r.json()["error"]["code"] == "rate_limited" and int(r.headers["Retry-After"]) >= 1
        for r in responses
        if r.status_code == 429
    )
    assert len(_sessions(database_url)) - before == RATE_PER_MINUTE
