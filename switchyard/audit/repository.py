"""Queries on the audit log."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from switchyard.core.models import AuditEntry


def page(
    session: Session, tenant_id: str, *, action: str | None, target_id: str | None, after: int | None, limit: int
) -> list[AuditEntry]:
    """Newest first (ids increase with time), after the cursor; fetches one extra row, which tells whether there
    are more. The (tenant_id, id) index serves the order; the filters are checked on the rows it walks."""
    query = select(AuditEntry).where(AuditEntry.tenant_id == tenant_id)
    if action:
        # `key.*` is every action on keys.
        query = query.where(
            AuditEntry.action.startswith(action[:-1]) if action.endswith(".*") else AuditEntry.action == action
        )
    if target_id:
        query = query.where(AuditEntry.target_id == target_id)
    if after is not None:
        query = query.where(AuditEntry.id < after)
    return list(session.scalars(query.order_by(AuditEntry.id.desc()).limit(limit + 1)))
