"""Recording admin actions, in the transaction of the change they describe, and reading them back."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from switchyard.audit import repository
from switchyard.core.models import AuditEntry, utcnow

# The actor of changes made on the command line.
CLI_ACTOR = "cli"


def record(
    session: Session,
    tenant_id: str,
    actor: str,
    action: str,
    target_type: str,
    target_id: str | None,
    *,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    """Append an entry. Callers pass views that hold no secret (no key hash, no webhook secret): the log is
    readable by every admin of the tenant and kept for good."""
    session.add(
        AuditEntry(
            tenant_id=tenant_id,
            actor=actor,
            action=action,
            target_type=target_type,
            target_id=target_id,
            before=before,
            after=after,
            created_at=utcnow(),
        )
    )


def entry_view(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "actor": entry.actor,
        "action": entry.action,
        "target_type": entry.target_type,
        "target_id": entry.target_id,
        "before": entry.before,
        "after": entry.after,
        "created_at": entry.created_at.isoformat(),
    }


def list_entries(
    session: Session, tenant_id: str, *, action: str | None, target_id: str | None, after: int | None, limit: int
) -> dict[str, Any]:
    """A page of the tenant's audit log, newest first; `next` is the `after` of the following page."""
    rows = repository.page(session, tenant_id, action=action, target_id=target_id, after=after, limit=limit)
    more = len(rows) > limit
    rows = rows[:limit]
    return {"data": [entry_view(r) for r in rows], "next": rows[-1].id if more and rows else None}
