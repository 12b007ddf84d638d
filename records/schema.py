"""The tables, as SQLAlchemy Core metadata. Alembic migrations create them; this module is what the code reads.

Types are chosen to mean the same on SQLite and PostgreSQL: `Uuid` (native on PostgreSQL, CHAR(32) on
SQLite), JSON, and `UTCDateTime`, which always hands back aware UTC datetimes because SQLite keeps none.
Enumerated columns are plain strings guarded by CHECK constraints, so adding a value is one migration.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from contract.session_type import SessionType
from records.outcome import as_utc


class UTCDateTime(sa.TypeDecorator[datetime]):
    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


SESSION_TYPES = tuple(t.value for t in SessionType)
SESSION_STATUSES = ("created", "active", "ended")
SUMMARY_STATES = ("pending", "completed", "skipped", "suppressed", "failed")
MEMORY_STATES = ("pending", "synced", "skipped", "suppressed")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", sa.Uuid(), primary_key=True),
    sa.Column("session_type", sa.String(16), nullable=False),
    sa.Column("agent_id", sa.Uuid(), nullable=True),
    sa.Column("team_id", sa.Uuid(), nullable=True),
    sa.Column("revision_id", sa.Uuid(), nullable=True),
    sa.Column("end_user_id", sa.String(255), nullable=True),
    sa.Column("context_variables", sa.JSON(), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=True),
    sa.Column("ended_at", UTCDateTime(), nullable=True),
    # VARCHAR(64) like the platform's column: unknown values are coerced in Python, not rejected here.
    sa.Column("end_reason", sa.String(64), nullable=True),
    sa.Column("procedure_id", sa.Uuid(), nullable=True),
    sa.Column("procedure_name", sa.String(255), nullable=True),
    sa.Column("procedure_router_latency_ms", sa.Float(), nullable=True),
    sa.Column("procedure_reason", sa.Text(), nullable=True),
    sa.Column("member_changes", sa.JSON(), nullable=False),
    sa.Column("transcript", sa.JSON(), nullable=False),
    sa.Column("turn_metrics", sa.JSON(), nullable=False),
    # platform tool runs (records.outcome.ToolCallRecord); NULL on rows written before 0004 and before the call ends
    sa.Column("tool_calls", sa.JSON(), nullable=True),
    sa.Column("usage", sa.JSON(), nullable=False),
    sa.Column("summary", sa.Text(), nullable=True),
    sa.Column("summary_state", sa.String(16), nullable=False),
    sa.Column("memory_state", sa.String(16), nullable=False),
    sa.Column("postcall_error", sa.Text(), nullable=True),
    sa.Column("postcall_completed_at", UTCDateTime(), nullable=True),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.CheckConstraint(_in("session_type", SESSION_TYPES), name="session_type"),
    sa.CheckConstraint(_in("status", SESSION_STATUSES), name="status"),
    sa.CheckConstraint(_in("summary_state", SUMMARY_STATES), name="summary_state"),
    sa.CheckConstraint(_in("memory_state", MEMORY_STATES), name="memory_state"),
    sa.CheckConstraint("NOT (agent_id IS NOT NULL AND team_id IS NOT NULL)", name="agent_xor_team"),
)

memory_facts = sa.Table(
    "memory_facts",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("end_user_id", sa.String(255), nullable=False),
    # sha256 of the case-folded, whitespace-normalised text: the dedupe key, short enough for any index
    sa.Column("fact_key", sa.String(64), nullable=False),
    sa.Column("fact", sa.Text(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("last_seen_at", UTCDateTime(), nullable=False),
    sa.Column(
        "source_session_id",
        sa.Uuid(),
        sa.ForeignKey("sessions.id", ondelete="SET NULL"),
        nullable=True,
    ),
    sa.UniqueConstraint("end_user_id", "fact_key"),
    sa.Index(None, "end_user_id", "last_seen_at"),
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column(
        "session_id",
        sa.Uuid(),
        sa.ForeignKey("sessions.id", ondelete="CASCADE"),
        nullable=False,
        unique=True,
    ),
    sa.Column("payload", sa.JSON(), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
    sa.Column("delivered_at", UTCDateTime(), nullable=True),
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    # set when delivery gave up (attempts or age exhausted); cleared by `voice-worker outbox resend`
    sa.Column("parked_at", UTCDateTime(), nullable=True),
    sa.Index(None, "delivered_at", "next_attempt_at"),
)


# The web-call door's state shared by its replicas (door/shared_state.py, migration 0002): idempotency entries and
# per-API-key rate-limit buckets. Defined with the rest of the database so the migrations and the models are one.
door_idempotency = sa.Table(
    "door_idempotency",
    metadata,
    sa.Column("scope", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(1024), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("status_code", sa.Integer(), nullable=True),
    sa.Column("body", sa.Text(), nullable=True),
    sa.Column("lease_until", sa.Float(), nullable=False),
    sa.Column("expires_at", sa.Float(), nullable=False, index=True),
)

door_rate_buckets = sa.Table(
    "door_rate_buckets",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("tokens", sa.Float(), nullable=False),
    sa.Column("updated", sa.Float(), nullable=False),
    sa.Column("granted", sa.Boolean(), nullable=False),
)
