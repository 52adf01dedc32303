"""Stream tickets: a browser's way onto a WebSocket or an SSE stream without putting its key in a URL.

`EventSource` cannot set headers, and a key in `?api_key=` ends up in every proxy's access log. A ticket, made
by `POST /v1/ws/ticket` with the key in the `Authorization` header, is good for one handshake (`?ticket=`),
within `ttl_s`: logged, it is already spent or about to lapse. Only its SHA-256 is kept, in Redis (shared by the
API processes) or, in embedded mode, in the process that made it. It names the key, never holds it: using it
reads the key again, so a key revoked in between makes the ticket worthless."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from datetime import datetime
from typing import Any

import orjson
import redis
import redis.asyncio
from sqlalchemy.orm import Session

from switchyard.core.errors import Unauthenticated
from switchyard.tenancy import repository
from switchyard.tenancy.service import Principal, expired_message, principal_for, principal_for_tenant

TICKET_PREFIX = "tkt_"


def _ticket_key(ticket: str) -> str:
    return "switchyard:ticket:" + hashlib.sha256(ticket.encode()).hexdigest()


class Tickets:
    """Issue and redeem tickets (each once)."""

    def __init__(self, redis_url: str | None, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._redis = redis.asyncio.Redis.from_url(redis_url) if redis_url else None
        self._local: dict[str, tuple[bytes, float]] = {}
        self._lock = threading.Lock()

    async def issue(self, principal: Principal) -> str:
        """A new ticket for the principal's key."""
        ticket = TICKET_PREFIX + secrets.token_urlsafe(32)
        record = orjson.dumps(
            {
                "key_id": principal.key_id,
                "tenant_id": principal.tenant_id,
                "role": principal.role,
                "expires_at": principal.expires_at.isoformat() if principal.expires_at else None,
            }
        )
        if self._redis is not None:
            await self._redis.set(_ticket_key(ticket), record, px=int(self.ttl_s * 1000))
        else:
            now = time.monotonic()
            with self._lock:
                self._local = {k: v for k, v in self._local.items() if v[1] > now}
                self._local[_ticket_key(ticket)] = (record, now + self.ttl_s)
        return ticket

    async def redeem(self, ticket: str) -> dict[str, Any] | None:
        """The ticket's record, once (None: unknown, spent or lapsed)."""
        if not ticket.startswith(TICKET_PREFIX) or len(ticket) > 100:
            return None
        key = _ticket_key(ticket)
        raw: bytes | str | None
        if self._redis is not None:
            raw = await self._redis.getdel(key)
        else:
            with self._lock:
                entry = self._local.pop(key, None)
            raw = entry[0] if entry is not None and entry[1] > time.monotonic() else None
        if raw is None:
            return None
        record: dict[str, Any] = orjson.loads(raw)
        return record

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()


def ticket_principal(session: Session, record: dict[str, Any]) -> Principal:
    """The principal a redeemed ticket stands for, read again now (a revoked key's ticket is refused)."""
    key_id = str(record["key_id"])
    if key_id.startswith("jwt:"):
        tenant = repository.tenant(session, str(record["tenant_id"]))
        expires = record.get("expires_at")
        principal = principal_for_tenant(
            tenant,
            role=str(record["role"]),
            key_id=key_id,
            expires_at=datetime.fromisoformat(expires) if expires else None,
        )
    else:
        found = repository.key_and_tenant_by_id(session, key_id)
        if found is None:
            raise Unauthenticated("this ticket's API key has been revoked")
        principal = principal_for(*found)
    if principal.expired():
        raise Unauthenticated(expired_message(principal))
    return principal
