"""Bring a database to the current schema: `upgrade(database_url)`, called by the worker and the door at start-up.

Both processes may start together, so the upgrade runs inside one transaction that first takes a lock
(a PostgreSQL advisory lock; on SQLite, BEGIN IMMEDIATE from `records.engine`). The loser waits, then finds
the schema current and does nothing. Both backends run DDL transactionally, so a failed upgrade leaves the
previous schema intact.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.pool import NullPool

from records.engine import create_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# An arbitrary constant shared by every process that migrates this schema ("voicewrk" in ASCII).
_PG_LOCK_KEY = 0x766F69636577726B


def alembic_config() -> Config:
    """A config that needs no alembic.ini, so an installed wheel can migrate too."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found under {MIGRATIONS_DIR}")
    return head


def upgrade(database_url: str, revision: str = "head") -> None:
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def current_revision(database_url: str) -> str | None:
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
