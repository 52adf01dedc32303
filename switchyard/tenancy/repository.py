"""Queries on tenants and keys."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from switchyard.core.db import lock_for_update
from switchyard.core.ids import new_id
from switchyard.core.models import ApiKey, Tenant, utcnow


def tenant_by_name(session: Session, name: str) -> Tenant | None:
    return session.scalar(select(Tenant).where(Tenant.name == name))


def tenant(session: Session, tenant_id: str, *, lock: bool = False) -> Tenant:
    query = select(Tenant).where(Tenant.id == tenant_id)
    if lock:
        lock_for_update(session)
        query = query.with_for_update()
    row = session.scalar(query)
    assert row is not None, tenant_id  # a principal's tenant exists (tenants are never deleted under it)
    return row


def add_tenant(session: Session, name: str) -> Tenant:
    """A new tenant; when another process made one of the same name meanwhile, that one (the unique name
    decides, in a savepoint so the caller's transaction goes on)."""
    try:
        with session.begin_nested():
            row = Tenant(id=new_id("ten"), name=name)
            session.add(row)
        return row
    except IntegrityError:
        found = tenant_by_name(session, name)
        assert found is not None
        return found


def key_of_tenant(session: Session, tenant_id: str, key_id: str, *, lock: bool = False) -> ApiKey | None:
    """A key, or None when it does not exist or belongs to another tenant."""
    query = select(ApiKey).where(ApiKey.id == key_id, ApiKey.tenant_id == tenant_id)
    if lock:
        lock_for_update(session)
        query = query.with_for_update()
    return session.scalar(query)


def key_page(session: Session, tenant_id: str, *, revoked: bool, after: str | None, limit: int) -> list[ApiKey]:
    """Newest first (ids sort by creation time), after the cursor; fetches one extra row."""
    query = select(ApiKey).where(ApiKey.tenant_id == tenant_id)
    if not revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    if after:
        query = query.where(ApiKey.id < after)
    return list(session.scalars(query.order_by(ApiKey.id.desc()).limit(limit + 1)))


def key_with_tenant(session: Session, key_hash: str) -> tuple[ApiKey, Tenant] | None:
    """The unrevoked key of this hash and its tenant."""
    row = session.execute(
        select(ApiKey, Tenant)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
    ).first()
    return None if row is None else row.tuple()


def key_by_id(session: Session, key_id: str) -> ApiKey | None:
    """A key of any tenant (the command line's revocation)."""
    lock_for_update(session)
    return session.scalar(select(ApiKey).where(ApiKey.id == key_id).with_for_update())


def standing_key_ids(session: Session, key_ids: Collection[str]) -> set[str]:
    """Those of `key_ids` that are neither revoked nor expired (what open streams check they still have)."""
    if not key_ids:
        return set()
    now = utcnow()
    rows = session.scalars(
        select(ApiKey.id).where(
            ApiKey.id.in_(list(key_ids)),
            ApiKey.revoked_at.is_(None),
            or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
        )
    )
    return set(rows)


def key_and_tenant_by_id(session: Session, key_id: str) -> tuple[ApiKey, Tenant] | None:
    """The unrevoked key of this id and its tenant (a ticket's key, when the ticket is used)."""
    row = session.execute(
        select(ApiKey, Tenant)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
    ).first()
    return None if row is None else row.tuple()
