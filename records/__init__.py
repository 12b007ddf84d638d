"""Session records: what happened in each call, the per-end-user memory, and the webhook outbox.

One SQLAlchemy code path for an embedded SQLite file and PostgreSQL; Alembic owns the schema
(`records.migrate.upgrade`). Async callers use `records.store.SessionStore`, which keeps every database
call off the event loop.
"""
