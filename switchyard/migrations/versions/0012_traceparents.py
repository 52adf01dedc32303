"""the W3C traceparent that created a task, a run or a batch (traces continue or link to it)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-09 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("tasks", "runs", "batches")


def upgrade() -> None:
    # Nullable and without a default: adding it rewrites no rows.
    for table in _TABLES:
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(sa.Column("traceparent", sa.String(55), nullable=True))


def downgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column("traceparent")
