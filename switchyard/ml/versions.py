"""Versions of predict models: the traffic weights between them (the config's, or an admin's from the
database), which version a task goes to, and the change of weights at run time (roll forward, roll back).

Every process keeps the weights of all models for `model_weights_cache_s` and then reads them again (one
query for all models), so a change reaches every worker and API process within that time, without a restart
and without a message bus (embedded mode has none). A task keeps the version it was given: a retry or a
failover stays on deployments of that version.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Collection, Mapping
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from switchyard.audit.service import record as audit_record
from switchyard.core.config import AppConfig, ModelConfig
from switchyard.core.db import Database
from switchyard.core.errors import Forbidden, InvalidRequest, NotFound
from switchyard.core.models import ModelVersionWeights, Tenant, utcnow

log = structlog.get_logger(__name__)


# --- repository ----------------------------------------------------------------------------------------------------


def read_all(session: Session) -> dict[str, dict[str, float]]:
    """Every model's weights as an admin set them."""
    return {
        row.model: {str(k): float(v) for k, v in row.weights.items()}
        for row in session.scalars(select(ModelVersionWeights))
    }


def write(session: Session, model: str, weights: Mapping[str, float], actor: str) -> None:
    row = session.get(ModelVersionWeights, model)
    if row is None:
        session.add(ModelVersionWeights(model=model, weights=dict(weights), updated_by=actor, updated_at=utcnow()))
    else:
        row.weights, row.updated_by, row.updated_at = dict(weights), actor, utcnow()


# --- service -------------------------------------------------------------------------------------------------------


def check_weights(config: AppConfig, name: str, weights: Mapping[str, Any]) -> dict[str, float]:
    """The new weights of a model's versions, complete (a version left out keeps no traffic: weight 0), or
    InvalidRequest naming the offending field."""
    model = config.models.get(name)
    if model is None:
        raise NotFound(f"model '{name}' not found", param="model", code="model_not_found")
    if not model.versions:
        raise InvalidRequest(f"model '{name}' has no versions", param="model")
    checked: dict[str, float] = {}
    for version, weight in weights.items():
        where = f"weights.{version}"
        if version not in model.versions:
            raise InvalidRequest(
                f"unknown version '{version}'; the model has: {', '.join(model.versions)}", param=where
            )
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight >= 0:
            raise InvalidRequest("a weight must be a number >= 0", param=where)
        checked[version] = float(weight)
    if sum(checked.values()) <= 0:
        raise InvalidRequest("at least one version must have a weight > 0", param="weights")
    return {v: checked.get(v, 0.0) for v in model.versions}


def set_weights(
    db: Database,
    config: AppConfig,
    name: str,
    weights: Mapping[str, Any],
    actor: str,
    tenant_id: str,
    operators: Collection[str],
) -> dict[str, float]:
    """Store a model's new weights (blocking), recorded in the acting tenant's audit log; every process uses
    them within its cache time. Only a tenant named in `operators` may."""
    checked = check_weights(config, name, weights)
    with db.transaction() as tx:
        tenant = tx.session.get(Tenant, tenant_id)
        if tenant is None or tenant.name not in operators:
            # The weights route every tenant's traffic: one tenant's admin must not move another's.
            raise Forbidden(
                "only an operator tenant's admin may change a model's weights (SWITCHYARD_OPERATOR_TENANTS)",
                code="operator_only",
            )
        before = VersionWeights(config, None).weights(name) | read_all(tx.session).get(name, {})
        write(tx.session, name, checked, actor)
        audit_record(
            tx.session,
            tenant_id,
            actor,
            "model.weights.update",
            "model",
            name,
            before={"weights": before},
            after={"weights": checked},
        )
    log.info("model_weights_set", model=name, weights=checked, actor=actor)
    return checked


class VersionWeights:
    """The current weights of every versioned model, read from the database at most every `ttl_s`."""

    def __init__(self, config: AppConfig, db: Database | None, ttl_s: float = 1.0) -> None:
        self._config = config
        self._db = db
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._stored: dict[str, dict[str, float]] = {}
        self._read_at = float("-inf")

    def weights(self, name: str) -> dict[str, float]:
        """{version: weight} for a model with versions (the admin's, else the config file's)."""
        model = self._config.models[name]
        assert model.versions is not None
        stored = self._current().get(name)
        if stored is None:
            return dict(model.versions)
        # Versions the row does not know (the config gained one since) take no traffic until given some.
        return {v: stored.get(v, 0.0) for v in model.versions}

    def pick(self, name: str, model: ModelConfig) -> str:
        """A version drawn by weight."""
        weights = self.weights(name)
        versions = [v for v, w in weights.items() if w > 0] or list(weights)
        return random.choices(versions, weights=[weights[v] or 1.0 for v in versions])[0]

    def fresh(self) -> dict[str, dict[str, float]]:
        """Read now (blocking), ignoring the cache: what `GET /v1/models/{name}` shows."""
        self._read_at = float("-inf")
        return self._current()

    def _current(self) -> dict[str, dict[str, float]]:
        if self._db is None or time.monotonic() - self._read_at < self._ttl_s:
            return self._stored
        with self._lock:
            if time.monotonic() - self._read_at >= self._ttl_s:
                try:
                    with self._db.transaction() as tx:
                        self._stored = read_all(tx.session)
                except Exception as exc:  # a database hiccup keeps the last weights known; said, and retried
                    log.warning("model_weights_unreadable", error=f"{type(exc).__name__}: {exc}")
                self._read_at = time.monotonic()
        return self._stored
