"""Session creators for door tests: they record what the door asked for instead of writing a database."""

from __future__ import annotations

import asyncio
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RecordedSession:
    session_id: uuid.UUID
    session_type: str
    agent_id: uuid.UUID | None
    team_id: uuid.UUID | None
    context_variables: dict[str, Any] | None


@dataclass
class RecordingSessionCreator:
    """Async creator. `gate`, when set, holds every call until the test opens it; `fail_next` fails calls."""

    sessions: list[RecordedSession] = field(default_factory=list)
    gate: asyncio.Event | None = None
    fail_next: int = 0
    # Text a careless door might echo: a connection string with a password.
    failure_text: str = "could not connect to postgresql://door:hunter2-db-password@db:5432/voice"

    async def create_session(
        self,
        session_id: uuid.UUID,
        session_type: str,
        agent_id: uuid.UUID | None = None,
        team_id: uuid.UUID | None = None,
        context_variables: dict[str, Any] | None = None,
    ) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_next > 0:
            self.fail_next -= 1
            raise ConnectionError(self.failure_text)
        self.sessions.append(RecordedSession(session_id, session_type, agent_id, team_id, context_variables))


@dataclass
class SyncRecordingSessionCreator:
    """Blocking creator, like a sync SQLAlchemy store: the door must call it off the event loop."""

    sessions: list[RecordedSession] = field(default_factory=list)
    threads: list[str] = field(default_factory=list)

    def create_session(
        self,
        session_id: uuid.UUID,
        session_type: str,
        agent_id: uuid.UUID | None = None,
        team_id: uuid.UUID | None = None,
        context_variables: dict[str, Any] | None = None,
    ) -> None:
        self.threads.append(threading.current_thread().name)
        self.sessions.append(RecordedSession(session_id, session_type, agent_id, team_id, context_variables))
