"""Where the door records the session a web call belongs to, behind a small protocol.

The door needs one thing from storage: create the session row before the browser joins, so the worker and
post-call processing find it. Any object with a `create_session(...)` method (sync or async) will do; the
default is `records.store.SessionStore` on `DATABASE_URL` (async; its own worker threads do the blocking).
"""

from __future__ import annotations

import inspect
import uuid
from typing import Any, Protocol, runtime_checkable

import anyio.to_thread

from worker.dispatch import SessionType
from worker.settings import Settings


@runtime_checkable
class SessionCreator(Protocol):
    def create_session(
        self,
        session_id: uuid.UUID,
        session_type: SessionType,
        agent_id: uuid.UUID | None = None,
        team_id: uuid.UUID | None = None,
        context_variables: dict[str, Any] | None = None,
    ) -> Any: ...


async def create_session(
    creator: SessionCreator,
    *,
    session_id: uuid.UUID,
    session_type: SessionType,
    agent_id: uuid.UUID | None,
    team_id: uuid.UUID | None,
    context_variables: dict[str, Any] | None,
) -> None:
    """Call `creator.create_session` whether it is a coroutine function or blocking (then off the loop)."""
    kwargs = {
        "agent_id": agent_id,
        "team_id": team_id,
        "context_variables": context_variables,
    }
    method = creator.create_session
    if inspect.iscoroutinefunction(method):
        await method(session_id, session_type, **kwargs)
        return
    result = await anyio.to_thread.run_sync(lambda: method(session_id, session_type, **kwargs))
    if inspect.isawaitable(result):
        await result


def default_session_creator(settings: Settings) -> SessionCreator:
    """`records.store.SessionStore` on `DATABASE_URL`, its schema brought current first (as the worker does)."""
    # Imported here: a door given its own creator (tests, another store) needs no database stack.
    from records.migrate import upgrade
    from records.store import SessionStore

    upgrade(settings.database_url)
    store: SessionCreator = SessionStore.from_settings(settings)
    return store
