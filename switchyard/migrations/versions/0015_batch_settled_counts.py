"""a batch keeps the counts of its settled lines (every line below `settled_below` has ended), so that an
advance aggregates only the lines above them rather than every line of the batch

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-11 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch_op:
        batch_op.add_column(sa.Column("settled_below", sa.Integer(), server_default=sa.text("0"), nullable=False))
        batch_op.add_column(sa.Column("settled", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch_op:
        batch_op.drop_column("settled")
        batch_op.drop_column("settled_below")
