"""The queries of enforcement: what a key or tenant spent in a window, and the policy of a stored key."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from switchyard.core.models import ApiKey, Task, Tenant
from switchyard.core.policy import Budget, Limits
from switchyard.tenancy.quotas.policy import Policy, Tiers, policy_for

_UNFINISHED = ("queued", "running")


def spent_usd(session: Session, kind: str, scope_id: str, start: datetime, end: datetime) -> float:
    """USD of the key's or tenant's tasks admitted in [start, end) (a task's spend counts in the window it was
    admitted in, as its reservation did)."""
    of = Task.key_id == scope_id if kind == "key" else Task.tenant_id == scope_id
    total = session.scalar(
        select(func.coalesce(func.sum(Task.cost_usd), 0.0)).where(of, Task.created_at >= start, Task.created_at < end)
    )
    return float(total or 0.0)


def held_usd(session: Session, kind: str, scope_id: str, start: datetime, end: datetime) -> float:
    """Embedded mode: USD reserved by the scope's unfinished admitted tasks of the window."""
    of = Task.key_id == scope_id if kind == "key" else Task.tenant_id == scope_id
    rows = session.execute(
        select(Task.admission).where(
            of,
            Task.status.in_(_UNFINISHED),
            Task.admission.is_not(None),
            Task.created_at >= start,
            Task.created_at < end,
        )
    ).all()
    return sum(float((r.admission or {}).get("reserved_usd", 0.0)) for r in rows)


def in_flight(session: Session, kind: str, scope_id: str) -> int:
    """Embedded mode: the scope's admitted tasks that have not ended (its calls in flight)."""
    of = Task.key_id == scope_id if kind == "key" else Task.tenant_id == scope_id
    count = session.scalar(select(func.count()).where(of, Task.status.in_(_UNFINISHED), Task.admission.is_not(None)))
    return int(count or 0)


def stored(session: Session, task_ids: list[str]) -> set[str]:
    """Which of these tasks have been committed."""
    if not task_ids:
        return set()
    return set(session.scalars(select(Task.id).where(Task.id.in_(task_ids))))


def policy_of_key(session: Session, tenant_id: str, key_id: str | None, tiers: Tiers) -> Policy | None:
    """The policy a run or batch draws on: the key that made it (as it is now) and its tenant."""
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        return None
    key = session.get(ApiKey, key_id) if key_id is not None else None
    key_part: tuple[Limits | None, Budget | None, str | None] = (None, None, None)
    if key is not None:
        key_part = (
            Limits.model_validate(key.limits) if key.limits else None,
            Budget.model_validate(key.budget) if key.budget else None,
            key.tier,
        )
    tenant_part = (
        Limits.model_validate(tenant.limits) if tenant.limits else None,
        Budget.model_validate(tenant.budget) if tenant.budget else None,
        tenant.tier,
    )
    return policy_for(tenant_id, key_id if key is not None else None, key_part, tenant_part, tiers)
