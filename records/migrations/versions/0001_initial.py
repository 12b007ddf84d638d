"""Session records, per-end-user memory facts and the webhook outbox.

Revision ID: 0001_initial
Revises:
Create Date: 2025-01-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("session_type", sa.String(16), nullable=False),
        sa.Column("agent_id", sa.Uuid(), nullable=True),
        sa.Column("team_id", sa.Uuid(), nullable=True),
        sa.Column("revision_id", sa.Uuid(), nullable=True),
        sa.Column("end_user_id", sa.String(255), nullable=True),
        sa.Column("context_variables", sa.JSON(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", _TZ, nullable=False),
        sa.Column("started_at", _TZ, nullable=True),
        sa.Column("ended_at", _TZ, nullable=True),
        sa.Column("end_reason", sa.String(64), nullable=True),
        sa.Column("procedure_id", sa.Uuid(), nullable=True),
        sa.Column("procedure_name", sa.String(255), nullable=True),
        sa.Column("procedure_router_latency_ms", sa.Float(), nullable=True),
        sa.Column("procedure_reason", sa.Text(), nullable=True),
        sa.Column("member_changes", sa.JSON(), nullable=False),
        sa.Column("transcript", sa.JSON(), nullable=False),
        sa.Column("turn_metrics", sa.JSON(), nullable=False),
        sa.Column("usage", sa.JSON(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.Column("summary_state", sa.String(16), nullable=False),
        sa.Column("memory_state", sa.String(16), nullable=False),
        sa.Column("postcall_error", sa.Text(), nullable=True),
        sa.Column("postcall_completed_at", _TZ, nullable=True),
        sa.Column("updated_at", _TZ, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sessions"),
        sa.CheckConstraint("session_type IN ('live', 'test', 'simulation')", name="ck_sessions_session_type"),
        sa.CheckConstraint("status IN ('created', 'active', 'ended')", name="ck_sessions_status"),
        sa.CheckConstraint(
            "summary_state IN ('pending', 'completed', 'skipped', 'suppressed', 'failed')",
            name="ck_sessions_summary_state",
        ),
        sa.CheckConstraint(
            "memory_state IN ('pending', 'synced', 'skipped', 'suppressed')",
            name="ck_sessions_memory_state",
        ),
        sa.CheckConstraint("NOT (agent_id IS NOT NULL AND team_id IS NOT NULL)", name="ck_sessions_agent_xor_team"),
    )

    op.create_table(
        "memory_facts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("end_user_id", sa.String(255), nullable=False),
        sa.Column("fact_key", sa.String(64), nullable=False),
        sa.Column("fact", sa.Text(), nullable=False),
        sa.Column("created_at", _TZ, nullable=False),
        sa.Column("last_seen_at", _TZ, nullable=False),
        sa.Column("source_session_id", sa.Uuid(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_memory_facts"),
        sa.ForeignKeyConstraint(
            ["source_session_id"],
            ["sessions.id"],
            name="fk_memory_facts_source_session_id_sessions",
            ondelete="SET NULL",
        ),
        sa.UniqueConstraint("end_user_id", "fact_key", name="uq_memory_facts_end_user_id_fact_key"),
    )
    op.create_index("ix_memory_facts_end_user_id_last_seen_at", "memory_facts", ["end_user_id", "last_seen_at"])

    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _TZ, nullable=False),
        sa.Column("delivered_at", _TZ, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", _TZ, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.id"], name="fk_outbox_session_id_sessions", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("session_id", name="uq_outbox_session_id"),
    )
    op.create_index("ix_outbox_delivered_at_next_attempt_at", "outbox", ["delivered_at", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_outbox_delivered_at_next_attempt_at", table_name="outbox")
    op.drop_table("outbox")
    op.drop_index("ix_memory_facts_end_user_id_last_seen_at", table_name="memory_facts")
    op.drop_table("memory_facts")
    op.drop_table("sessions")
