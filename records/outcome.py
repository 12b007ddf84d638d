"""What the worker knows when a call ends: the input to `SessionStore.complete` and post-call processing.

Value names follow the platform: session types `live|test|simulation` and `SessionTerminationReason`
(feather-api v1.21). An end reason the platform does not know is coerced to `unknown` at write time, as
the platform itself does, so that a new worker-side reason never loses a record.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from contract.session_type import SessionType


class SessionStatus(StrEnum):
    CREATED = "created"
    ACTIVE = "active"
    ENDED = "ended"


class SummaryState(StrEnum):
    PENDING = "pending"
    COMPLETED = "completed"
    # no instructions, no transcript or no summary model configured
    SKIPPED = "skipped"
    # test sessions: the platform forbids summaries for them
    SUPPRESSED = "suppressed"
    FAILED = "failed"


class MemoryState(StrEnum):
    """The platform's four states. A failed sync stays `pending`, with the cause in `postcall_error`."""

    PENDING = "pending"
    SYNCED = "synced"
    SKIPPED = "skipped"
    SUPPRESSED = "suppressed"


class SessionTerminationReason(StrEnum):
    VOICEMAIL_DETECTED = "voicemail_detected"
    SILENCE_TIMEOUT = "silence_timeout"
    MAX_CALL_DURATION = "max_call_duration"
    PARTICIPANT_LEFT = "participant_left"
    PIPELINE_EXIT = "pipeline_exit"
    USER_REQUESTED = "user_requested"
    AGENT_INITIATED = "agent_initiated"
    RESOLVED = "resolved"
    UNRESOLVED = "unresolved"
    ABANDONED = "abandoned"
    ESCALATED = "escalated"
    HANDOFF_RESOLVED = "handoff_resolved"
    TRANSFERRED = "transferred"
    ERROR = "error"
    UNKNOWN = "unknown"
    CALLEE_BUSY = "callee_busy"
    CALLEE_NO_ANSWER = "callee_no_answer"
    CALLEE_UNAVAILABLE = "callee_unavailable"
    CALLEE_DECLINED = "callee_declined"
    CALLEE_NOT_FOUND = "callee_not_found"
    SIP_FAILED = "sip_failed"
    UNKNOWN_REASON = "unknown_reason"
    CLIENT_INITIATED = "client_initiated"
    DUPLICATE_IDENTITY = "duplicate_identity"
    SERVER_SHUTDOWN = "server_shutdown"
    PARTICIPANT_REMOVED = "participant_removed"
    ROOM_DELETED = "room_deleted"
    STATE_MISMATCH = "state_mismatch"
    JOIN_FAILURE = "join_failure"
    MIGRATION = "migration"
    SIGNAL_CLOSE = "signal_close"
    ROOM_CLOSED = "room_closed"
    USER_UNAVAILABLE = "user_unavailable"
    USER_REJECTED = "user_rejected"
    SIP_TRUNK_FAILURE = "sip_trunk_failure"
    CONNECTION_TIMEOUT = "connection_timeout"
    MEDIA_FAILURE = "media_failure"
    AGENT_ERROR = "agent_error"
    DISPATCH_FAILED = "dispatch_failed"
    TOKEN_MINT_FAILED = "token_mint_failed"
    SIP_DIAL_FAILED = "sip_dial_failed"
    PARTICIPANT_JOIN_TIMEOUT = "participant_join_timeout"
    SETUP_ERROR = "setup_error"
    STALE_ROUTING = "stale_routing"
    SUPERSEDED = "superseded"
    DUPLICATE_DISPATCH = "duplicate_dispatch"


def coerce_termination_reason(value: object) -> SessionTerminationReason:
    try:
        return SessionTerminationReason(str(getattr(value, "value", value)).strip().lower())
    except ValueError:
        return SessionTerminationReason.UNKNOWN


def as_utc(value: datetime) -> datetime:
    """Naive datetimes are taken as UTC: SQLite and some callers drop the zone."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="after")
    @classmethod
    def _utc(cls, value: Any) -> Any:
        return as_utc(value) if isinstance(value, datetime) else value


class ProcedureChoice(_Model):
    """The turn-1 router's decision. `id`/`name` are None when the router chose no procedure."""

    id: uuid.UUID | None = None
    name: str | None = None
    router_latency_ms: float | None = Field(None, ge=0)
    reason: str | None = None


class MemberChange(_Model):
    """A team call moving from one member to another (supervisor or swarm handoff)."""

    at: datetime
    from_member_id: uuid.UUID | None = None
    to_member_id: uuid.UUID
    reason: str | None = None


class ToolCallRecord(_Model):
    """One run of a platform tool (tools/function_tools.py): when, how long, how it ended. Never its arguments,
    request or response, which may carry what the caller said or what a secret opened."""

    name: str
    tool_id: uuid.UUID | None = None
    tool_type: str
    started_at: datetime
    ended_at: datetime
    duration_ms: float = Field(ge=0)
    # ok | http_error | timeout | refused | invalid_arguments | error | transferred | handed_off | unavailable
    status: str
    http_status: int | None = None
    attempts: int = Field(0, ge=0)
    error: str | None = None


TranscriptRole = Literal["user", "assistant", "system", "developer"]


class TranscriptItem(_Model):
    role: TranscriptRole
    text: str
    created_at: datetime
    interrupted: bool = False


class TurnMetrics(_Model):
    """Latency figures of one agent turn, in milliseconds; None when the pipeline did not measure it."""

    turn_index: int = Field(ge=0)
    created_at: datetime | None = None
    end_of_speech_to_first_audio_ms: float | None = Field(None, ge=0)
    llm_ttft_ms: float | None = Field(None, ge=0)
    tts_ttfb_ms: float | None = Field(None, ge=0)


class SessionOutcome(_Model):
    session_id: uuid.UUID
    session_type: SessionType
    agent_id: uuid.UUID | None = None
    team_id: uuid.UUID | None = None
    revision_id: uuid.UUID | None = None
    end_user_id: str | None = Field(None, min_length=1, max_length=255)
    started_at: datetime
    ended_at: datetime
    end_reason: SessionTerminationReason = SessionTerminationReason.UNKNOWN
    procedure: ProcedureChoice | None = None
    member_changes: tuple[MemberChange, ...] = ()
    transcript: tuple[TranscriptItem, ...] = ()
    turn_metrics: tuple[TurnMetrics, ...] = ()
    tool_calls: tuple[ToolCallRecord, ...] = ()
    usage: dict[str, Any] = Field(default_factory=dict)
    summary_instructions: str | None = None

    @field_validator("end_reason", mode="before")
    @classmethod
    def _coerce_reason(cls, value: object) -> SessionTerminationReason:
        return coerce_termination_reason(value)

    @model_validator(mode="after")
    def _consistent(self) -> SessionOutcome:
        if (self.agent_id is None) == (self.team_id is None):
            raise ValueError("exactly one of agent_id and team_id is required")
        if self.ended_at < self.started_at:
            raise ValueError("ended_at is before started_at")
        return self

    @property
    def user_turns(self) -> int:
        return sum(1 for item in self.transcript if item.role == "user" and item.text.strip())
