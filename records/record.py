"""What the store hands back: a session record, a remembered fact, an outbox entry.

`SessionRecord.model_dump(mode="json")` is also the `session` object of the webhook payload, so its field
names are part of the contract with the platform.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from contract.session_type import SessionType
from records.outcome import (
    MemberChange,
    MemoryState,
    ProcedureChoice,
    SessionStatus,
    SessionTerminationReason,
    SummaryState,
    ToolCallRecord,
    TranscriptItem,
    TurnMetrics,
)


class _Read(BaseModel):
    model_config = ConfigDict(frozen=True)


class SessionRecord(_Read):
    id: uuid.UUID
    session_type: SessionType
    agent_id: uuid.UUID | None
    team_id: uuid.UUID | None
    revision_id: uuid.UUID | None
    end_user_id: str | None
    context_variables: dict[str, Any] | None
    status: SessionStatus
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    end_reason: SessionTerminationReason | None
    procedure: ProcedureChoice | None
    member_changes: tuple[MemberChange, ...]
    transcript: tuple[TranscriptItem, ...]
    turn_metrics: tuple[TurnMetrics, ...]
    tool_calls: tuple[ToolCallRecord, ...] = ()
    usage: dict[str, Any]
    summary: str | None
    summary_state: SummaryState
    memory_state: MemoryState
    postcall_error: str | None
    postcall_completed_at: datetime | None
    updated_at: datetime


class MemoryFact(_Read):
    end_user_id: str
    fact: str
    created_at: datetime
    last_seen_at: datetime
    source_session_id: uuid.UUID | None


class OutboxItem(_Read):
    id: int
    session_id: uuid.UUID
    payload: dict[str, Any]
    attempts: int
    next_attempt_at: datetime
    delivered_at: datetime | None
    last_error: str | None
    created_at: datetime
    parked_at: datetime | None = None

    @property
    def state(self) -> str:
        """queued (retried on the backoff schedule), parked (given up on) or delivered (acknowledged)."""
        if self.delivered_at is not None:
            return "delivered"
        return "queued" if self.parked_at is None else "parked"
