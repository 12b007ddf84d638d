"""Bring a database to the current schema: `upgrade(database_url)`, called by the worker and the door at start-up.

Both processes may start together, so the upgrade runs inside one transaction that first takes a lock
(a PostgreSQL advisory lock; on SQLite, BEGIN IMMEDIATE from `records.engine`). The loser waits, then finds
the schema current and does nothing. Both backends run DDL transactionally, so a failed upgrade leaves the
previous schema intact.

alembic is imported only when there is something to do: a process whose database is already at `HEAD` (every
start but the first) reads one row instead (`python -X importtime`: alembic costs 0.1-0.15 s of a worker's
cold start on a quiet machine, 0.35 s on a loaded one; docs/performance.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import exc, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from records.engine import create_engine

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# An arbitrary constant shared by every process that migrates this schema ("voicewrk" in ASCII).
_PG_LOCK_KEY = 0x766F69636577726B
# The newest revision under migrations/versions; tests/test_records_store.py fails when a migration is added and
# this is not moved to it.
HEAD = "0004_tool_calls"


def alembic_config() -> Config:
    """A config that needs no alembic.ini, so an installed wheel can migrate too."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found under {MIGRATIONS_DIR}")
    return head


def upgrade(database_url: str, revision: str = "head") -> None:
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        # Read without the lock: a database already at HEAD has nothing to wait for. Anything else (no table
        # yet, an older or a newer revision) takes the locked path below, where alembic decides.
        if revision == "head" and _stamped(engine) == [HEAD]:
            return
        from alembic import command

        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def _stamped(engine: Engine) -> list[str] | None:
    """The revisions alembic stamped in this database, or None before its first migration."""
    try:
        with engine.connect() as connection:
            return [row[0] for row in connection.execute(text("SELECT version_num FROM alembic_version"))]
    except exc.DBAPIError:  # no alembic_version table yet
        return None


def current_revision(database_url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
