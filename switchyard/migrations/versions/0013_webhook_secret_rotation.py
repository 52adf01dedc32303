"""webhook signing secrets rotate with an overlap: the previous secret and until when it still signs

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 16:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable and without a default: adding them rewrites no rows.
    with op.batch_alter_table("tenants") as batch_op:
        batch_op.add_column(sa.Column("previous_webhook_secret", sa.String(100), nullable=True))
        batch_op.add_column(sa.Column("previous_webhook_secret_until", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("webhooks") as batch_op:
        batch_op.add_column(sa.Column("previous_secret", sa.String(100), nullable=True))
        batch_op.add_column(sa.Column("previous_secret_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("webhooks") as batch_op:
        batch_op.drop_column("previous_secret_until")
        batch_op.drop_column("previous_secret")
    with op.batch_alter_table("tenants") as batch_op:
        batch_op.drop_column("previous_webhook_secret_until")
        batch_op.drop_column("previous_webhook_secret")
