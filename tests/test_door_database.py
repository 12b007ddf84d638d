"""How the door runs its statements (door/database.py, door/sessions.py, door/shared_state.py), against a real
PostgreSQL and SQLite.

What made the door slow on PostgreSQL (issue #16, point 6): every statement ran in a worker thread on the synchronous
engine (a pool checkout with its pre-ping, BEGIN, COMMIT), and the threads fought the event loop for the GIL: ~110
calls per second where SQLite served 200. A call now makes two statements on an asyncio pool and no thread hop.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
import psycopg
import pytest
import sqlalchemy as sa

import door.database
from contract.session_type import SessionType
from door.app import create_app
from door.database import AsyncPostgres, Connection
from door.sessions import OneWriterAtATime, SessionWriter, default_session_creator
from door.shared_state import DatabaseRateLimiter, shared_engine
from records.store import SessionConflictError, SessionStore
from tests.doubles.door_world import FRONT_DESK_TEAM, SUPPORT_AGENT, feather_headers, make_settings
from tests.doubles.postgres import (  # noqa: F401 - pytest fixtures
    PostgresServer,
    database_url,
    postgres_server,
    postgres_url,
)


async def test_a_warm_door_makes_two_statements_per_call_and_no_thread_hop(
    tmp_path: Path,
    postgres_url: str,  # noqa: F811 - the fixture imported above
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings(tmp_path, DATABASE_URL=postgres_url, DOOR_SHARED_STATE="database")
    app = create_app(settings)
    hops: list[Any] = []
    statements: list[str] = []
    real_hop, real_fetch = anyio.to_thread.run_sync, door.database.fetch_first

    async def counting_hop(func: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(func)
        return await real_hop(func, *args, **kwargs)

    async def counting_fetch(connection: Connection, statement: door.database.Statement, params: Any) -> Any:
        statements.append(statement.sql.split()[0])
        return await real_fetch(connection, statement, params)

    body = {"agent_id": str(SUPPORT_AGENT)}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://door.test") as client:
        assert (await client.post("/v1/voice/web-call", json=body, headers=feather_headers())).status_code == 200
        monkeypatch.setattr(anyio.to_thread, "run_sync", counting_hop)
        monkeypatch.setattr(asyncio, "to_thread", counting_hop)
        monkeypatch.setattr(door.database, "fetch_first", counting_fetch)
        for _ in range(10):
            assert (await client.post("/v1/voice/web-call", json=body, headers=feather_headers())).status_code == 200
    assert hops == []
    assert statements == ["INSERT", "INSERT"] * 10  # the rate-limit upsert, the session row


def _without_identity(record: Any) -> dict[str, Any]:
    return {k: v for k, v in record.model_dump().items() if k not in ("id", "created_at", "updated_at")}


async def test_the_door_writes_the_row_the_records_store_writes(
    tmp_path: Path,
    database_url: str,  # noqa: F811 - the fixture imported above
) -> None:
    writer = default_session_creator(make_settings(tmp_path, DATABASE_URL=database_url))  # brings the schema current
    assert isinstance(writer, OneWriterAtATime if database_url.startswith("sqlite") else SessionWriter)
    store = SessionStore(database_url)
    seeds = {"customer_name": "Ada", "tier": 3, "nested": {"ok": True}}
    for kwargs in ({"agent_id": SUPPORT_AGENT, "context_variables": seeds}, {"team_id": FRONT_DESK_TEAM}):
        by_door, by_store = uuid.uuid4(), uuid.uuid4()
        await writer.create_session(by_door, SessionType.TEST, **kwargs)
        await store.create_session(by_store, SessionType.TEST, **kwargs)
        door_record, store_record = await store.get(by_door), await store.get(by_store)
        assert door_record is not None and store_record is not None
        assert _without_identity(door_record) == _without_identity(store_record)
        assert door_record.created_at.tzinfo is not None
    await writer.create_session(by_door, SessionType.TEST, team_id=FRONT_DESK_TEAM)  # the same session again: no-op
    with pytest.raises(SessionConflictError):
        await writer.create_session(by_door, SessionType.LIVE, team_id=FRONT_DESK_TEAM)
    await writer.aclose()
    await store.aclose()


def _terminate_other_connections(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            killed = conn.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
        return int(killed)
    finally:
        engine.dispose()


async def _backend_pid(connection: Connection) -> int:
    cursor = await connection.execute("SELECT pg_backend_pid()")
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def test_the_pool_outlives_its_connections(postgres_url: str) -> None:  # noqa: F811 - the fixture imported above
    pool = AsyncPostgres(postgres_url, size=2)
    first = await asyncio.gather(pool.run(_backend_pid), pool.run(_backend_pid))
    assert await pool.run(_backend_pid) in first  # kept open and reused
    # What a PostgreSQL restart or failover does to the pooled connections:
    assert _terminate_other_connections(postgres_url) == 2
    after = await pool.run(_backend_pid)
    assert after not in first
    await pool.aclose()


async def test_a_database_that_cannot_be_reached_is_an_error_not_a_retry(
    postgres_server: PostgresServer,  # noqa: F811 - the fixture imported above
) -> None:
    url = sa.make_url(postgres_server.admin_dsn).set(database=f"missing_{uuid.uuid4().hex}")
    pool = AsyncPostgres(url.render_as_string(hide_password=False))
    with pytest.raises(psycopg.OperationalError):
        await pool.run(_backend_pid)


async def _synchronous_commit(connection: Connection) -> tuple[str, str]:
    cursor = await connection.execute(
        "SELECT setting, source FROM pg_settings WHERE name = 'synchronous_commit'",
    )
    row = await cursor.fetchone()
    assert row is not None
    return str(row[0]), str(row[1])


async def test_only_rate_limit_spends_skip_the_wal_flush(
    tmp_path: Path,
    postgres_url: str,  # noqa: F811 - the fixture imported above
) -> None:
    limiter = DatabaseRateLimiter(shared_engine(postgres_url), 60)
    limiter_pool = limiter._database._pool
    assert limiter_pool is not None
    assert await limiter_pool.run(_synchronous_commit) == ("off", "client")

    writer = default_session_creator(make_settings(tmp_path, DATABASE_URL=postgres_url))
    assert isinstance(writer, SessionWriter)
    writer_pool = writer._database._pool
    assert writer_pool is not None
    # The server's own setting (the test cluster turns it off for speed): session rows are never made less durable.
    assert (await writer_pool.run(_synchronous_commit))[1] != "client"
    await limiter.aclose()
    await writer.aclose()


def _connections(url: str) -> int:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ).scalar_one()
            )
    finally:
        engine.dispose()


async def test_the_door_closes_its_pools_when_it_stops(
    tmp_path: Path,
    postgres_url: str,  # noqa: F811 - the fixture imported above
) -> None:
    _terminate_other_connections(postgres_url)
    settings = make_settings(tmp_path, DATABASE_URL=postgres_url, DOOR_SHARED_STATE="database")
    app = create_app(settings)
    body = {"agent_id": str(SUPPORT_AGENT)}
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://door.test") as client:
            assert (await client.post("/v1/voice/web-call", json=body, headers=feather_headers())).status_code == 200
        # the rate limiter's, the idempotency store's and the session writer's pools
        assert await asyncio.to_thread(_connections, postgres_url) >= 2
    assert await asyncio.to_thread(_connections, postgres_url) == 0
