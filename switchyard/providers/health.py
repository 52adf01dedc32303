"""The health of deployments, shared by every worker process through Redis: calls in flight, recent latency,
outcomes in a rolling window, and the circuit breaker that the window drives.

Each deployment (named `provider/model`) has, under `switchyard:dep:<name>`:
- `:state`, a hash {state: closed|open|half_open, until: epoch seconds an open breaker stays open};
- `:w:<bucket>`, hashes counting ok (`o`) and failed (`f`) calls per tenth of the window, expiring by themselves;
- `:busy`, a sorted set of the calls in flight scored by when their lease lapses (a killed worker's call
  stops counting on its own);
- `:lat`, the latest successful latencies (ms), newest first;
- `:probe`, the half-open probe's claim, which lapses like a lease.

The breaker's rules live here in Python; the stores only keep counts (Redis, or this process's memory in
embedded mode, where nothing is shared; there each worker writes its counts to a file for the API to show,
see `health_snapshots`).
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis
import structlog

from switchyard.core.config import BreakerConfig

log = structlog.get_logger(__name__)

BUCKETS = 10
LATENCIES_KEPT = 200


@dataclass(frozen=True)
class Stats:
    """What the router and `GET /v1/providers` need to know of one deployment."""

    state: str
    open_until: float
    in_flight: int
    ok: int
    failed: int
    latencies_ms: tuple[float, ...]  # recent successes, newest first

    @property
    def mean_latency_ms(self) -> float | None:
        recent = self.latencies_ms[:20]
        return sum(recent) / len(recent) if recent else None


@dataclass(frozen=True)
class EndedCall:
    name: str
    call_id: str
    outcome: str | None  # "ok", "fail", or None: not held for or against the deployment
    latency_ms: float


class HealthStore(Protocol):
    def read(self, names: list[str], now: float, bucket_s: float, keep: int = 20) -> list[Stats]:
        """The stats of each deployment, with up to `keep` recent latencies."""
        ...

    def begin(self, name: str, call_id: str, lapses_at: float) -> None: ...

    def end(self, call: EndedCall, now: float, bucket_s: float) -> Stats:
        """Forget the call, count its outcome; the stats afterwards."""
        ...

    def set_state(self, name: str, state: str, until: float) -> None: ...

    def take_probe(self, name: str, call_id: str, ttl_s: float) -> bool:
        """Claim the half-open probe (and mark the breaker half-open); False when another call has it."""
        ...

    def reset_window(self, name: str, now: float, bucket_s: float) -> None: ...

    def next_turn(self, model: str) -> int:
        """A counter shared by the workers: whose turn it is (round_robin)."""
        ...


# One script for reading and for ending a call, so both sum the window the same way. ARGV: op ("read" or
# "end"), now, bucket width (s), buckets, latencies to return; for "end" also the call id, the outcome ("ok",
# "fail" or "": not counted) and the latency (ms) of the call, for the single key given.
_SCRIPT = """
local op, now, width, n, keep = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local idx = math.floor(now / width)
local function stats(p)
  local st = redis.call('HMGET', p .. ':state', 'state', 'until')
  redis.call('ZREMRANGEBYSCORE', p .. ':busy', '-inf', now)
  local ok, fail = 0, 0
  for b = idx - n + 1, idx do
    local v = redis.call('HMGET', p .. ':w:' .. b, 'o', 'f')
    ok = ok + (tonumber(v[1]) or 0)
    fail = fail + (tonumber(v[2]) or 0)
  end
  local lat = redis.call('LRANGE', p .. ':lat', 0, keep - 1)
  return {st[1] or 'closed', st[2] or '0', redis.call('ZCARD', p .. ':busy'), ok, fail, lat}
end
if op == 'end' then
  local p, call, outcome = KEYS[1], ARGV[6], ARGV[7]
  redis.call('ZREM', p .. ':busy', call)
  if outcome ~= '' then
    local bucket = p .. ':w:' .. idx
    redis.call('HINCRBY', bucket, outcome == 'ok' and 'o' or 'f', 1)
    redis.call('EXPIRE', bucket, math.ceil(width * (n + 1)))
    if outcome == 'ok' then
      redis.call('LPUSH', p .. ':lat', ARGV[8])
      redis.call('LTRIM', p .. ':lat', 0, {kept} - 1)
    end
  end
  return stats(p)
end
local out = {}
for i, p in ipairs(KEYS) do
  out[i] = stats(p)
end
return out
""".replace("{kept}", str(LATENCIES_KEPT))

_PROBE = """
if redis.call('SET', KEYS[1] .. ':probe', ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('HSET', KEYS[1] .. ':state', 'state', 'half_open')
  return 1
end
return 0
"""


def _key(name: str) -> str:
    return f"switchyard:dep:{name}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _stats(raw: list[Any]) -> Stats:
    state, until, busy, ok, failed, latencies = raw
    return Stats(
        state=_text(state),
        open_until=float(_text(until)),
        in_flight=int(busy),
        ok=int(ok),
        failed=int(failed),
        latencies_ms=tuple(float(_text(x)) for x in latencies),
    )


class RedisHealthStore:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._script = client.register_script(_SCRIPT)
        self._probe = client.register_script(_PROBE)

    def read(self, names: list[str], now: float, bucket_s: float, keep: int = 20) -> list[Stats]:
        raw = self._script(keys=[_key(n) for n in names], args=["read", now, bucket_s, BUCKETS, keep])
        return [_stats(r) for r in raw]

    def begin(self, name: str, call_id: str, lapses_at: float) -> None:
        self.client.zadd(f"{_key(name)}:busy", {call_id: lapses_at})

    def end(self, call: EndedCall, now: float, bucket_s: float) -> Stats:
        args: list[str | float] = ["end", now, bucket_s, BUCKETS, 20, call.call_id, call.outcome or ""]
        args.append(round(call.latency_ms, 1))
        return _stats(self._script(keys=[_key(call.name)], args=args))

    def set_state(self, name: str, state: str, until: float) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(f"{_key(name)}:state", mapping={"state": state, "until": until})
        if state != "half_open":
            pipe.delete(f"{_key(name)}:probe")
        pipe.execute()

    def take_probe(self, name: str, call_id: str, ttl_s: float) -> bool:
        return bool(self._probe(keys=[_key(name)], args=[call_id, max(1, int(ttl_s * 1000))]))

    def reset_window(self, name: str, now: float, bucket_s: float) -> None:
        idx = math.floor(now / bucket_s)
        self.client.delete(*(f"{_key(name)}:w:{b}" for b in range(idx - BUCKETS + 1, idx + 1)))

    def next_turn(self, model: str) -> int:
        return int(self.client.incr(f"switchyard:turn:{model}"))


@dataclass
class _Local:
    state: str = "closed"
    until: float = 0.0
    busy: dict[str, float] = field(default_factory=dict)
    buckets: dict[int, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    latencies: list[float] = field(default_factory=list)
    probe_until: float = 0.0


_SEVERITY = {"closed": 0, "half_open": 1, "open": 2}


class MemoryHealthStore:
    """The same counts in this process (embedded mode: one worker, nothing to share). `on_change` is called
    after every change (outside the lock)."""

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self._deps: dict[str, _Local] = defaultdict(_Local)
        self._turns: dict[str, int] = {}
        self._lock = threading.Lock()
        self.on_change = on_change

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def snapshot(self) -> dict[str, Any]:
        """The counts as JSON-ready data, for `merge` in another process."""
        with self._lock:
            return {
                name: {
                    "state": dep.state,
                    "until": dep.until,
                    "busy": dict(dep.busy),
                    "buckets": {str(k): list(v) for k, v in dep.buckets.items()},
                    "latencies": list(dep.latencies),
                }
                for name, dep in self._deps.items()
            }

    def merge(self, snapshot: dict[str, Any]) -> None:
        """Add another process's counts: windows and calls in flight add up, latencies join, and a breaker
        shows the worst state any process has it in (each process keeps its own)."""
        with self._lock:
            for name, data in snapshot.items():
                dep = self._deps[name]
                if _SEVERITY.get(data["state"], 0) > _SEVERITY[dep.state]:
                    dep.state = data["state"]
                dep.until = max(dep.until, float(data["until"]))
                dep.busy.update(data["busy"])
                for key, (ok, failed) in data["buckets"].items():
                    counts = dep.buckets[int(key)]
                    counts[0] += ok
                    counts[1] += failed
                dep.latencies.extend(data["latencies"])
                del dep.latencies[LATENCIES_KEPT:]

    def _stats(self, dep: _Local, now: float, bucket_s: float, keep: int = 20) -> Stats:
        idx = math.floor(now / bucket_s)
        for key in [k for k in dep.buckets if k <= idx - BUCKETS]:
            del dep.buckets[key]
        for call in [c for c, lapses in dep.busy.items() if lapses <= now]:
            del dep.busy[call]
        ok = sum(v[0] for k, v in dep.buckets.items() if k > idx - BUCKETS)
        failed = sum(v[1] for k, v in dep.buckets.items() if k > idx - BUCKETS)
        return Stats(dep.state, dep.until, len(dep.busy), ok, failed, tuple(dep.latencies[:keep]))

    def read(self, names: list[str], now: float, bucket_s: float, keep: int = 20) -> list[Stats]:
        with self._lock:
            return [self._stats(self._deps[n], now, bucket_s, keep) for n in names]

    def begin(self, name: str, call_id: str, lapses_at: float) -> None:
        with self._lock:
            self._deps[name].busy[call_id] = lapses_at
        self._changed()

    def end(self, call: EndedCall, now: float, bucket_s: float) -> Stats:
        with self._lock:
            dep = self._deps[call.name]
            dep.busy.pop(call.call_id, None)
            if call.outcome is not None:
                dep.buckets[math.floor(now / bucket_s)][0 if call.outcome == "ok" else 1] += 1
                if call.outcome == "ok":
                    dep.latencies.insert(0, round(call.latency_ms, 1))
                    del dep.latencies[LATENCIES_KEPT:]
            stats = self._stats(dep, now, bucket_s)
        self._changed()
        return stats

    def set_state(self, name: str, state: str, until: float) -> None:
        with self._lock:
            dep = self._deps[name]
            dep.state, dep.until = state, until
            if state != "half_open":
                dep.probe_until = 0.0
        self._changed()

    def take_probe(self, name: str, call_id: str, ttl_s: float) -> bool:
        with self._lock:
            dep, now = self._deps[name], time.time()
            if dep.probe_until > now:
                return False
            dep.probe_until, dep.state = now + ttl_s, "half_open"
        self._changed()
        return True

    def reset_window(self, name: str, now: float, bucket_s: float) -> None:
        with self._lock:
            self._deps[name].buckets.clear()
        self._changed()

    def next_turn(self, model: str) -> int:
        with self._lock:
            self._turns[model] = self._turns.get(model, -1) + 1
            return self._turns[model]


def health_store(client: redis.Redis | None) -> HealthStore:
    """Shared through Redis when there is one; this process's own otherwise."""
    return RedisHealthStore(client) if client is not None else MemoryHealthStore()


@dataclass(frozen=True)
class Admission:
    """A call let through to a deployment: it must be ended, and `probe` says it tests a half-open breaker."""

    name: str
    call_id: str
    probe: bool
    breaker: BreakerConfig


# Shown for a deployment whose health cannot be read (Redis away): traffic goes on as if all were well.
UNKNOWN = Stats(state="closed", open_until=0.0, in_flight=0, ok=0, failed=0, latencies_ms=())


class DeploymentHealth:
    """The breaker's rules over a store. When the store cannot be reached (Redis away) calls are let
    through and not counted: the breakers stop protecting until it is back, but nothing stops or fails
    for it, and the providers' own answers still drive retries and failover."""

    def __init__(self, store: HealthStore) -> None:
        self.store = store

    @staticmethod
    def bucket_s(breaker: BreakerConfig) -> float:
        return breaker.window_s / BUCKETS

    def read(self, names: list[str], breaker: BreakerConfig, keep: int = 20) -> list[Stats]:
        try:
            return self.store.read(names, time.time(), self.bucket_s(breaker), keep)
        except redis.RedisError:
            log.warning("deployment_health_unavailable", exc_info=True)
            return [UNKNOWN] * len(names)

    def next_turn(self, model: str) -> int:
        try:
            return self.store.next_turn(model)
        except redis.RedisError:
            return random.randrange(1 << 30)

    @staticmethod
    def usable(stats: Stats, now: float | None = None) -> bool:
        """Closed, or open with its cooldown over, or half-open (a probe may go if none is out: the claim of
        one whose worker died lapses)."""
        now = time.time() if now is None else now
        if stats.state == "open":
            return now >= stats.open_until
        return True

    def admit(self, name: str, call_id: str, stats: Stats, breaker: BreakerConfig, lease_s: float) -> Admission | None:
        """Let one call through (the probe, if the breaker is open and cooled down), or None."""
        now = time.time()
        probe = False
        try:
            if stats.state != "closed":
                if not self.usable(stats, now) or not self.store.take_probe(name, call_id, lease_s):
                    return None
                probe = True
            self.store.begin(name, call_id, now + lease_s)
        except redis.RedisError:
            log.warning("deployment_health_unavailable", exc_info=True)
        return Admission(name, call_id, probe, breaker)

    def end(self, admission: Admission, outcome: str | None, latency_ms: float) -> None:
        """Count the outcome and move the breaker: "ok", "fail" (the deployment's fault), or None (the
        caller's fault, e.g. a 400: not held against the deployment)."""
        try:
            self._end(admission, outcome, latency_ms)
        except redis.RedisError:
            log.warning("deployment_health_unavailable", exc_info=True)

    def _end(self, admission: Admission, outcome: str | None, latency_ms: float) -> None:
        now = time.time()
        breaker = admission.breaker
        ended = EndedCall(admission.name, admission.call_id, outcome, latency_ms)
        stats = self.store.end(ended, now, self.bucket_s(breaker))
        if admission.probe:
            if outcome == "fail":
                self.store.set_state(admission.name, "open", now + breaker.cooldown_s)
            else:
                self.store.reset_window(admission.name, now, self.bucket_s(breaker))
                self.store.set_state(admission.name, "closed", 0.0)
            return
        total = stats.ok + stats.failed
        if (
            outcome == "fail"
            and stats.state == "closed"
            and total >= breaker.min_requests
            and stats.failed / total >= breaker.failure_rate
        ):
            self.store.set_state(admission.name, "open", now + breaker.cooldown_s)
