"""attempts: the logical model of each attempt; an index on their start for usage reports

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 05:55:52.518360
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("attempts", sa.Column("model", sa.String(length=200), nullable=True))
    op.create_index("ix_attempts_started_at", "attempts", ["started_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_attempts_started_at", table_name="attempts")
    op.drop_column("attempts", "model")
