"""events: the public sequence number assigned by the relay after commit

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 05:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
        batch.create_unique_constraint("uq_events_seq", ["seq"])
        batch.drop_index("ix_events_task_id_id")
        batch.drop_index("ix_events_tenant_id_id")
    # Events written before the relay existed were committed long ago: their insert order is good enough.
    op.execute("UPDATE events SET seq = id")
    op.create_index("ix_events_tenant_id_seq", "events", ["tenant_id", "seq"])
    op.create_index("ix_events_task_id_seq", "events", ["task_id", "seq"])
    op.create_index("ix_events_run_id_seq", "events", ["run_id", "seq"])
    op.create_index("ix_events_batch_id_seq", "events", ["batch_id", "seq"])
    op.create_index(
        "ix_events_unsequenced",
        "events",
        ["id"],
        postgresql_where=sa.text("seq IS NULL"),
        sqlite_where=sa.text("seq IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_events_unsequenced", table_name="events")
    op.drop_index("ix_events_batch_id_seq", table_name="events")
    op.drop_index("ix_events_run_id_seq", table_name="events")
    op.drop_index("ix_events_task_id_seq", table_name="events")
    op.drop_index("ix_events_tenant_id_seq", table_name="events")
    with op.batch_alter_table("events") as batch:
        batch.drop_constraint("uq_events_seq", type_="unique")
        batch.drop_column("seq")
        batch.create_index("ix_events_task_id_id", ["task_id", "id"])
        batch.create_index("ix_events_tenant_id_id", ["tenant_id", "id"])
