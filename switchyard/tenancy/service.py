"""Tenants and API keys. A key is shown once; only its SHA-256 is stored.

Key management (create, list, change, revoke) and the tenant's own limits and budget are admin actions: each
appends an audit entry in the transaction of the change, and, once committed, tells every API process to drop
the principals it cached (`invalidation`)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy.orm import Session

from switchyard.audit.service import record
from switchyard.core.config import AppConfig
from switchyard.core.db import Tx
from switchyard.core.errors import Conflict, Forbidden, InvalidRequest, NotFound, Unauthenticated
from switchyard.core.ids import new_id
from switchyard.core.models import ApiKey, Tenant, utcnow
from switchyard.core.policy import Budget, Limits
from switchyard.tenancy import repository
from switchyard.tenancy.invalidation import Announcer, key_changed, tenant_changed
from switchyard.tenancy.schemas import KeyCreate, KeyUpdate, TenantBudget

Role = Literal["admin", "member", "viewer"]
ROLES: tuple[Role, ...] = ("admin", "member", "viewer")
# A role may do what the roles after it may do.
_RANK = {"viewer": 0, "member": 1, "admin": 2}

KEY_PREFIX = "sy_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant and a role, and what the key and its tenant may use.

    `key_id` is the key's id, or `jwt:<subject>` for a JWT bearer. Limits and budgets are as stored (a tier
    is a name of the config file's `tiers:`, resolved where they are enforced)."""

    tenant_id: str
    role: str
    key_id: str
    models: frozenset[str] | None = None
    limits: Limits | None = None
    budget: Budget | None = None
    tier: str | None = None
    expires_at: datetime | None = None
    tenant_limits: Limits | None = None
    tenant_budget: Budget | None = None
    tenant_tier: str | None = None

    def allows(self, needed: str) -> bool:
        return _RANK[self.role] >= _RANK[needed]

    def may_use(self, model: str) -> bool:
        """Whether the key may call this logical model."""
        return self.models is None or model in self.models

    def expired(self, now: datetime | None = None) -> bool:
        """Whether the key (or the JWT) has expired."""
        return self.expires_at is not None and self.expires_at <= (now or utcnow())


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    """The tenant of this name, made if there is none (two processes making it at once agree on one)."""
    return repository.tenant_by_name(session, name) or repository.add_tenant(session, name)


def create_key(
    session: Session,
    tenant_name: str,
    role: Role,
    *,
    name: str | None = None,
    models: list[str] | None = None,
    tier: str | None = None,
    expires_at: datetime | None = None,
    created_by: str | None = None,
) -> tuple[ApiKey, str]:
    """Create a key for the tenant (creating the tenant if needed); returns the row and the plain key. With
    `created_by`, the creation is recorded in the tenant's audit log as done by it."""
    tenant = get_or_create_tenant(session, tenant_name)
    key, plain = _new_key(
        session, tenant.id, role, name=name, models=models, tier=tier, expires_at=expires_at, created_by=created_by
    )
    if created_by is not None:
        record(session, tenant.id, created_by, "key.create", "key", key.id, after=key_view(key))
    return key, plain


def _new_key(
    session: Session,
    tenant_id: str,
    role: str,
    *,
    name: str | None = None,
    models: list[str] | None = None,
    limits: Limits | None = None,
    budget: Budget | None = None,
    tier: str | None = None,
    expires_at: datetime | None = None,
    created_by: str | None = None,
) -> tuple[ApiKey, str]:
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        id=new_id("key"),
        tenant_id=tenant_id,
        role=role,
        prefix=plain[:10],
        key_hash=hash_key(plain),
        name=name,
        models=list(dict.fromkeys(models)) if models is not None else None,
        limits=_stored(limits),
        budget=_stored(budget),
        tier=tier,
        expires_at=expires_at,
        created_by=created_by,
        created_at=utcnow(),
    )
    session.add(key)
    session.flush()
    return key, plain


def _stored(policy: BaseModel | None) -> dict[str, Any] | None:
    """Limits or a budget as stored: only what is set; nothing set is no row value at all."""
    if policy is None:
        return None
    value = policy.model_dump(exclude_none=True)
    return value or None


def principal_for(key: ApiKey, tenant: Tenant) -> Principal:
    """What a stored key (and its tenant) may do."""
    return Principal(
        tenant_id=key.tenant_id,
        role=key.role,
        key_id=key.id,
        models=frozenset(key.models) if key.models is not None else None,
        limits=Limits.model_validate(key.limits) if key.limits else None,
        budget=Budget.model_validate(key.budget) if key.budget else None,
        tier=key.tier,
        expires_at=key.expires_at,
        tenant_limits=Limits.model_validate(tenant.limits) if tenant.limits else None,
        tenant_budget=Budget.model_validate(tenant.budget) if tenant.budget else None,
        tenant_tier=tenant.tier,
    )


def principal_for_tenant(tenant: Tenant, *, role: str, key_id: str, expires_at: datetime | None) -> Principal:
    """A principal with no key of its own (a JWT bearer): only the tenant's limits and budget apply."""
    return Principal(
        tenant_id=tenant.id,
        role=role,
        key_id=key_id,
        expires_at=expires_at,
        tenant_limits=Limits.model_validate(tenant.limits) if tenant.limits else None,
        tenant_budget=Budget.model_validate(tenant.budget) if tenant.budget else None,
        tenant_tier=tenant.tier,
    )


def verify_key(session: Session, plain: str) -> Principal:
    """The principal of a key; Unauthenticated, saying why, for an unknown, revoked or expired key."""
    found = repository.key_with_tenant(session, hash_key(plain))
    if found is None:
        raise Unauthenticated("invalid API key")
    principal = principal_for(*found)
    if principal.expired():
        raise Unauthenticated(expired_message(principal))
    return principal


def expired_message(principal: Principal) -> str:
    assert principal.expires_at is not None
    what = "token" if principal.key_id.startswith("jwt:") else "API key"
    return f"this {what} expired at {principal.expires_at.isoformat()}"


def authenticate(session: Session, plain: str) -> Principal | None:
    """The principal of a key, or None for an unknown, revoked or expired key."""
    try:
        return verify_key(session, plain)
    except Unauthenticated:
        return None


# --- keys over the API ----------------------------------------------------------------------------------------


def key_view(key: ApiKey) -> dict[str, Any]:
    """A key as the API shows it: its prefix, never the key or its hash (also what the audit log keeps)."""
    return {
        "id": key.id,
        "object": "api_key",
        "name": key.name,
        "role": key.role,
        "prefix": key.prefix,
        "models": key.models,
        "limits": key.limits,
        "budget": key.budget,
        "tier": key.tier,
        "expires_at": _iso(key.expires_at),
        "created_at": key.created_at.isoformat(),
        "created_by": key.created_by,
        "revoked_at": _iso(key.revoked_at),
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def check_models(config: AppConfig, models: list[str] | None, param: str = "models") -> None:
    """Refuse, naming the entry, a model the config file does not define."""
    for i, model in enumerate(models or ()):
        if model not in config.models:
            raise InvalidRequest(f"unknown model '{model}'", param=f"{param}[{i}]")


def check_tier(config: AppConfig, tier: str | None, param: str = "tier") -> None:
    """Refuse a tier the config file's `tiers:` does not name."""
    if tier is not None and tier not in config.tiers:
        known = ", ".join(sorted(config.tiers)) or "none"
        raise InvalidRequest(f"unknown tier '{tier}' (the config file's tiers: {known})", param=param)


def check_expiry(expires_at: datetime | None, param: str = "expires_at") -> datetime | None:
    """A future expiry, in UTC (a time without a zone is taken as UTC)."""
    if expires_at is None:
        return None
    if expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)
    if expires_at <= utcnow():
        raise InvalidRequest("expires_at is in the past", param=param)
    return expires_at.astimezone(UTC)


def issue_key(tx: Tx, config: AppConfig, principal: Principal, body: KeyCreate) -> dict[str, Any]:
    """A key for the caller's tenant, with a role no higher than the caller's; the answer holds the key."""
    if not principal.allows(body.role):
        raise Forbidden(f"a '{principal.role}' may not make a key with role '{body.role}'", param="role")
    check_models(config, body.models)
    check_tier(config, body.tier)
    key, plain = _new_key(
        tx.session,
        principal.tenant_id,
        body.role,
        name=body.name,
        models=body.models,
        limits=body.limits,
        budget=body.budget,
        tier=body.tier,
        expires_at=check_expiry(body.expires_at),
        created_by=principal.key_id,
    )
    view = key_view(key)
    record(tx.session, key.tenant_id, principal.key_id, "key.create", "key", key.id, after=view)
    return {**view, "key": plain}


def list_keys(session: Session, tenant_id: str, *, revoked: bool, after: str | None, limit: int) -> dict[str, Any]:
    """A page of the tenant's keys, newest first (revoked ones only when asked)."""
    rows = repository.key_page(session, tenant_id, revoked=revoked, after=after, limit=limit)
    more = len(rows) > limit
    rows = rows[:limit]
    return {"data": [key_view(k) for k in rows], "next": rows[-1].id if more and rows else None}


def _key(session: Session, tenant_id: str, key_id: str, *, lock: bool = False) -> ApiKey:
    key = repository.key_of_tenant(session, tenant_id, key_id, lock=lock)
    if key is None:
        raise NotFound(f"no key '{key_id}'", param="id")
    return key


def get_key(session: Session, tenant_id: str, key_id: str) -> dict[str, Any]:
    return key_view(_key(session, tenant_id, key_id))


def update_key(
    tx: Tx, config: AppConfig, principal: Principal, key_id: str, body: KeyUpdate, announcer: Announcer
) -> dict[str, Any]:
    """Change what the body names (null clears); every API process sees the change on the key's next request."""
    key = _key(tx.session, principal.tenant_id, key_id, lock=True)
    if key.revoked_at is not None:
        raise Conflict(f"key '{key_id}' is revoked", param="id")
    before = key_view(key)
    sent = body.model_fields_set
    if "name" in sent:
        key.name = body.name
    if "models" in sent:
        check_models(config, body.models)
        key.models = list(dict.fromkeys(body.models)) if body.models is not None else None
    if "limits" in sent:
        key.limits = _stored(body.limits)
    if "budget" in sent:
        key.budget = _stored(body.budget)
    if "tier" in sent:
        check_tier(config, body.tier)
        key.tier = body.tier
    if "expires_at" in sent:
        key.expires_at = check_expiry(body.expires_at)
    tx.session.flush()
    after = key_view(key)
    record(tx.session, key.tenant_id, principal.key_id, "key.update", "key", key.id, before=before, after=after)
    if after != before:
        tx.after_commit(lambda: announcer.announce(key_changed(key.id)))
    return after


def revoke_key(tx: Tx, tenant_id: str | None, key_id: str, actor: str, announcer: Announcer) -> ApiKey:
    """Revoke a key of the tenant (any tenant's: `None`, the command line). Revoking it again changes nothing."""
    key = (
        _key(tx.session, tenant_id, key_id, lock=True)
        if tenant_id is not None
        else repository.key_by_id(tx.session, key_id)
    )
    if key is None:
        raise NotFound(f"no key '{key_id}'", param="id")
    if key.revoked_at is None:
        before = key_view(key)
        key.revoked_at = utcnow()
        tx.session.flush()
        record(tx.session, key.tenant_id, actor, "key.revoke", "key", key.id, before=before, after=key_view(key))
        tx.after_commit(lambda: announcer.announce(key_changed(key.id)))
    return key


# --- the tenant's limits and budget ---------------------------------------------------------------------------


def tenant_limits(session: Session, tenant_id: str) -> dict[str, Any]:
    """The tenant's limits, every field (null: unlimited)."""
    return _limits_view(repository.tenant(session, tenant_id))


def _limits_view(tenant: Tenant) -> dict[str, Any]:
    return Limits.model_validate(tenant.limits or {}).model_dump()


def _budget_view(tenant: Tenant) -> dict[str, Any]:
    return {**Budget.model_validate(tenant.budget or {}).model_dump(), "tier": tenant.tier}


def tenant_budget(session: Session, tenant_id: str) -> dict[str, Any]:
    """The tenant's budget and tier, every field (null: none)."""
    return _budget_view(repository.tenant(session, tenant_id))


def set_tenant_limits(tx: Tx, principal: Principal, limits: Limits, announcer: Announcer) -> dict[str, Any]:
    """Replace the tenant's limits with `limits` (a field left out is unlimited)."""
    tenant = repository.tenant(tx.session, principal.tenant_id, lock=True)
    before = _limits_view(tenant)
    tenant.limits = _stored(limits)
    tx.session.flush()
    after = _limits_view(tenant)
    _changed(tx, principal, tenant, "tenant.limits.update", before, after, announcer)
    return after


def set_tenant_budget(
    tx: Tx, config: AppConfig, principal: Principal, body: TenantBudget, announcer: Announcer
) -> dict[str, Any]:
    """Replace the tenant's budget and tier with the body's (a field left out is none)."""
    check_tier(config, body.tier)
    tenant = repository.tenant(tx.session, principal.tenant_id, lock=True)
    before = _budget_view(tenant)
    tenant.budget = _stored(Budget.model_validate(body.model_dump(exclude={"tier"})))
    tenant.tier = body.tier
    tx.session.flush()
    after = _budget_view(tenant)
    _changed(tx, principal, tenant, "tenant.budget.update", before, after, announcer)
    return after


def _changed(
    tx: Tx,
    principal: Principal,
    tenant: Tenant,
    action: str,
    before: dict[str, Any],
    after: dict[str, Any],
    announcer: Announcer,
) -> None:
    record(tx.session, tenant.id, principal.key_id, action, "tenant", tenant.id, before=before, after=after)
    # A PUT of the same values is recorded (someone did it) but leaves the caches alone.
    if before != after:
        tenant_id = tenant.id
        tx.after_commit(lambda: announcer.announce(tenant_changed(tenant_id)))
