"""Reading the session records the worker wrote, from the test process (the store is the worker's own SQLite
file, read through the project's SessionStore like any other reader)."""

from __future__ import annotations

import asyncio
import time
import uuid

from records.record import SessionRecord
from records.store import SessionStore


async def wait_for_record(
    database_url: str, session_id: str | uuid.UUID, *, timeout: float = 30.0, ended: bool = True
) -> SessionRecord:
    """The record once the worker has completed it (end reason set); raises with what was there if not."""
    store = SessionStore(database_url)
    try:
        deadline = time.monotonic() + timeout
        record: SessionRecord | None = None
        while time.monotonic() < deadline:
            record = await store.get(session_id)
            if record is not None and (not ended or record.end_reason is not None):
                return record
            await asyncio.sleep(0.25)
        raise AssertionError(f"session {session_id} not completed within {timeout} s: {record!r}")
    finally:
        await store.aclose()
