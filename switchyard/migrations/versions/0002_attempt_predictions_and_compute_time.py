"""attempt predictions and compute time

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 13:43:35.494047
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("attempts", sa.Column("predictions", sa.Integer(), server_default=sa.text("0"), nullable=False))
    op.add_column("attempts", sa.Column("compute_ms", sa.Float(), server_default=sa.text("0"), nullable=False))


def downgrade() -> None:
    op.drop_column("attempts", "compute_ms")
    op.drop_column("attempts", "predictions")
