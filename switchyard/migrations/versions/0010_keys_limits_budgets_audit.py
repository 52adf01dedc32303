"""keys with names, models, limits, budgets, tiers and expiry; tenants' limits and budgets; tasks' key and
admission; the key of runs and batches; the audit log

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 13:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch_op:
        batch_op.add_column(sa.Column("limits", _JSON, nullable=True))
        batch_op.add_column(sa.Column("budget", _JSON, nullable=True))
        batch_op.add_column(sa.Column("tier", sa.String(length=100), nullable=True))
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.add_column(sa.Column("name", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("models", _JSON, nullable=True))
        batch_op.add_column(sa.Column("limits", _JSON, nullable=True))
        batch_op.add_column(sa.Column("budget", _JSON, nullable=True))
        batch_op.add_column(sa.Column("tier", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("created_by", sa.String(length=200), nullable=True))
    with op.batch_alter_table("tasks") as batch_op:
        batch_op.add_column(sa.Column("key_id", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("admission", _JSON, nullable=True))
    for table in ("runs", "batches"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(sa.Column("key_id", sa.String(length=200), nullable=True))
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target_type", sa.String(length=32), nullable=False),
        sa.Column("target_id", sa.String(length=200), nullable=True),
        sa.Column("before", _JSON, nullable=True),
        sa.Column("after", _JSON, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_audit_log_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index("ix_audit_log_tenant_id_id", "audit_log", ["tenant_id", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_audit_log_tenant_id_id", table_name="audit_log")
    op.drop_table("audit_log")
    for table in ("runs", "batches"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column("key_id")
    with op.batch_alter_table("tasks") as batch_op:
        batch_op.drop_column("admission")
        batch_op.drop_column("key_id")
    with op.batch_alter_table("api_keys") as batch_op:
        for column in ("created_by", "expires_at", "tier", "budget", "limits", "models", "name"):
            batch_op.drop_column(column)
    with op.batch_alter_table("tenants") as batch_op:
        batch_op.drop_column("tier")
        batch_op.drop_column("budget")
        batch_op.drop_column("limits")
