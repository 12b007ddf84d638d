"""Session records list the platform tool runs of the call (name, timing, status; never arguments or secrets).

Revision ID: 0004_tool_calls
Revises: 0003_outbox_parking
Create Date: 2026-12-02 08:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_tool_calls"
down_revision: str | None = "0003_outbox_parking"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # nullable: rows of calls that ended before this revision have no list, and need none
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("tool_calls", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("tool_calls")
