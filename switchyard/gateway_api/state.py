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
from switchyard.gateway_api.holds import TenantCounter, Waiters
from switchyard.gateway_api.open_streams import OpenStreams
from switchyard.gateway_api.ws_slots import ConnectionSlots
from switchyard.ml.signature import Signature
from switchyard.providers.health import DeploymentHealth
from switchyard.providers.status import LimitsView
from switchyard.settings import Settings
from switchyard.shedding.service import Shedder
from switchyard.tasks.completion import Completions
from switchyard.tasks.service import Gate
from switchyard.tenancy.invalidation import Announcer
from switchyard.tenancy.jwt_auth import JwtVerifier
from switchyard.tenancy.quotas.service import Quotas, Request
from switchyard.tenancy.service import Principal
from switchyard.tenancy.tickets import Tickets
from switchyard.workers.dispatch import PublishQueue
from switchyard.workflows.engine import Engine


@dataclass
class KeyCache:
    """Recently verified keys and JWTs (by SHA-256), so a request does not pay a database read to authenticate.

    Entries are dropped when a key changes or is revoked, or its tenant's limits or budget change: the process
    that made the change drops them itself, and tells every other API process over Redis (`key_events`). An
    entry lives `ttl_s` while that subscription is known to be live (`live_until`, pushed forward by every
    message and answered ping); otherwise — Redis away, or embedded mode — only `short_ttl_s`, so a change
    that could not be heard is seen within seconds. `generation` grows with every drop: a lookup that started
    before a drop does not put what it read (perhaps the key before its revocation) into the cache."""

    ttl_s: float
    short_ttl_s: float = 2.0
    # Monotonic time until which the invalidation channel is known to work (0: it is not).
    live_until: float = 0.0
    generation: int = 0
    _entries: dict[str, tuple[Principal, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.short_ttl_s = min(self.short_ttl_s, self.ttl_s)

    def get(self, key_hash: str) -> Principal | None:
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        now = time.monotonic()
        age = now - entry[1]
        if age < self.short_ttl_s or (age < self.ttl_s and now < self.live_until):
            return entry[0]
        return None

    def put(self, key_hash: str, principal: Principal, generation: int) -> None:
        """Keep a principal read when the cache was at `generation` (unless something was dropped since)."""
        with self._lock:
            if generation != self.generation:
                return
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[key_hash] = (principal, time.monotonic())

    def drop(self, *, key_id: str | None = None, tenant_id: str | None = None) -> None:
        """Forget the principals of a key, or of every key and JWT of a tenant."""
        with self._lock:
            self.generation += 1
            self._entries = {
                digest: entry
                for digest, entry in self._entries.items()
                if entry[0].key_id != key_id and entry[0].tenant_id != tenant_id
            }

    def clear(self) -> None:
        with self._lock:
            self.generation += 1
            self._entries = {}

    def __len__(self) -> int:
        return len(self._entries)


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
    # SSE streams per tenant, counted like WebSocket connections.
    sse_slots: ConnectionSlots
    # Synchronous waiters of this process, per tenant and in all.
    waiters: Waiters
    # WebSocket replays (`since`) running at once per tenant in this process.
    replays: TenantCounter
    # Open WebSockets and SSE streams by key: closed when their key is revoked.
    streams: OpenStreams
    # `?ticket=` for the WebSocket and SSE handshakes (POST /v1/ws/ticket).
    tickets: Tickets
    health: DeploymentHealth
    limits: LimitsView
    # The Files API's bytes (the same storage the workers read batch inputs from and write outputs to).
    files: Storage
    # Bearer JWTs (None: only API keys are accepted).
    jwt: JwtVerifier | None
    # Tells this process's key cache, and every other API process, that principals changed.
    announcer: Announcer
    # Limits and budgets: admission of the calls this process takes.
    quotas: Quotas
    # Load shedding: refuses submissions while their queue is backed up (figures kept fresh in the background).
    shedder: Shedder
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
        await self.shedder.close()
        await self.hub.close()
        await self.ws_slots.close()
        await self.sse_slots.close()
        await self.streams.close()
        await self.tickets.close()
        await self.completions.close()
        self.dispatcher.close()
        if self.pg is not None:
            await self.pg.close()
        self.db.dispose()
        if self.redis is not None:
            self.redis.close()
