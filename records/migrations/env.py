"""Alembic environment for the session-records schema.

Programmatic runs (`records.migrate.upgrade`) hand over an open connection in `config.attributes`; the
`alembic` command line (with the project's alembic.ini) connects to `DATABASE_URL` instead.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.pool import NullPool

from records.engine import create_engine
from records.schema import metadata

config = context.config
if config.config_file_name is not None and "connection" not in config.attributes:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _database_url() -> str:
    url = config.attributes.get("database_url") or os.environ.get("DATABASE_URL")
    return url or config.get_main_option("sqlalchemy.url") or "sqlite:///var/voice-worker.db"


def _run(connection: Connection) -> None:
    # batch mode lets later migrations alter SQLite tables (SQLite has almost no ALTER TABLE)
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=_database_url(), target_metadata=metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
elif (given := config.attributes.get("connection")) is not None:
    _run(given)
else:
    engine = create_engine(_database_url(), poolclass=NullPool)
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()
