"""The web-call door's state shared by its replicas: idempotency entries and per-API-key rate-limit buckets.

Revision ID: 0002_door_shared_state
Revises: 0001_initial
Create Date: 2026-12-02 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_door_shared_state"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Times are epoch seconds (float): the door compares them with arithmetic in one statement on both backends.
    op.create_table(
        "door_idempotency",
        sa.Column("scope", sa.String(64), nullable=False),
        sa.Column("key", sa.String(1024), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("lease_until", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "key"),
    )
    op.create_index("ix_door_idempotency_expires_at", "door_idempotency", ["expires_at"])
    op.create_table(
        "door_rate_buckets",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.Column("granted", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("door_rate_buckets")
    op.drop_index("ix_door_idempotency_expires_at", table_name="door_idempotency")
    op.drop_table("door_idempotency")
