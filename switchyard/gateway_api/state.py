"""What the API process holds: made in the lifespan, closed at shutdown."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import redis
from celery import Celery
from psycopg_pool import AsyncConnectionPool

from switchyard.core.config import AppConfig
from switchyard.core.db import Database
from switchyard.events.feed import EventHub
from switchyard.files.storage import Storage
from switchyard.gateway_api.ws_slots import ConnectionSlots
from switchyard.ml.signature import Signature
from switchyard.providers.health import DeploymentHealth
from switchyard.providers.status import LimitsView
from switchyard.settings import Settings
from switchyard.tasks.completion import Completions
from switchyard.tasks.service import Gate
from switchyard.tenancy.quotas.service import Quotas, Request
from switchyard.tenancy.service import Principal
from switchyard.workers.dispatch import PublishQueue
from switchyard.workflows.engine import Engine


@dataclass
class KeyCache:
    """Recently verified keys, so a request does not pay a database read to authenticate.
    A revoked key keeps working for at most `ttl_s`."""

    ttl_s: float
    _entries: dict[str, tuple[Principal, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, key_hash: str) -> Principal | None:
        entry = self._entries.get(key_hash)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, key_hash: str, principal: Principal) -> None:
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[key_hash] = (principal, time.monotonic() + self.ttl_s)


@dataclass
class ApiState:
    settings: Settings
    config: AppConfig
    signatures: dict[str, Signature]
    db: Database
    celery: Celery
    dispatcher: PublishQueue
    # Postgres only: the async pool of the single-statement transitions async routes run themselves.
    pg: AsyncConnectionPool | None
    redis: redis.Redis | None
    completions: Completions
    engine: Engine
    keys: KeyCache
    hub: EventHub
    ws_slots: ConnectionSlots
    health: DeploymentHealth
    limits: LimitsView
    # The Files API's bytes (the same storage the workers read batch inputs from and write outputs to).
    files: Storage
    # Limits and budgets: admission of the calls this process takes.
    quotas: Quotas
    # When this process started (monotonic): /readyz gives workers that long to run the duties a first time.
    started: float = field(default_factory=time.monotonic)

    def gate(self, principal: Principal) -> Gate | None:
        """What a submission of this caller is admitted against; None (no cost) when nothing applies."""
        policy = self.quotas.policy(principal)
        return Gate(self.quotas, policy) if policy is not None else None

    def request_only(self, principal: Principal) -> Request | None:
        """A run or batch counted as one request against the caller's request windows (its steps and lines
        draw on the budgets as they are made); None when no limit applies."""
        policy = self.quotas.policy(principal)
        if policy is None:
            return None
        return self.quotas.request(policy, "", None, tasks=False, budgets=False)

    async def aclose(self) -> None:
        await self.hub.close()
        await self.ws_slots.close()
        await self.completions.close()
        self.dispatcher.close()
        if self.pg is not None:
            await self.pg.close()
        self.db.dispose()
        if self.redis is not None:
            self.redis.close()
