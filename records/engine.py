"""One way to open the database, for the store and for migrations alike.

SQLite needs help to behave like a server database under concurrent writers: pysqlite's own transaction
handling starts transactions lazily (a read-then-write transaction can then fail with "database is locked"
without waiting), so the driver is put in autocommit mode and every SQLAlchemy transaction starts with
BEGIN IMMEDIATE, which takes the write lock up front and waits up to the busy timeout for it. The store's
own reads begin that way too (SQLAlchemy opens a transaction for them as well): simple and correct at one
worker's volume; a fleet uses PostgreSQL. WAL keeps outside readers (a sqlite3 shell, a backup) from
blocking the writer.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

SQLITE_BUSY_TIMEOUT_S = 30.0


def _is_in_memory(url: URL) -> bool:
    return url.database in (None, "", ":memory:") or bool(url.query.get("mode") == "memory")


def _ensure_sqlite_parent(url: URL) -> None:
    if _is_in_memory(url) or url.database is None or url.database.startswith("file:"):
        return
    Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _enable_wal(cursor: Any) -> None:
    # Switching to WAL needs the file to itself and SQLite does not wait on the busy handler for it: two
    # processes opening a fresh file at once (worker and door migrating together) would see "database is
    # locked". The mode is persistent, so once any connection switched it there is nothing left to do.
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def create_engine(database_url: str, **kwargs: Any) -> Engine:
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True, **kwargs)

    _ensure_sqlite_parent(url)
    engine = sa.create_engine(
        url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}, **kwargs
    )
    in_memory = _is_in_memory(url)

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            cursor.execute("PRAGMA foreign_keys=ON")
            if not in_memory:
                _enable_wal(cursor)
        finally:
            cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
