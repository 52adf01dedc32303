"""Admission and settlement of calls against limits and budgets.

Admission runs ONE Redis script (`scripts.ADMIT`) that checks every applicable window of the key and of its
tenant — request and token windows, calls in flight, daily and monthly budgets (spent + reserved + this
call's worst case) — and takes all of them or none. Nothing local enters the decision, so any number of API
and worker processes share the limits exactly. A call's worst-case cost is reserved; when its task ends,
`settle` (`scripts.SETTLE`, once per task: it deletes the reservation's record) turns the reservation into
the real cost, brings the token window to the real usage and gives the concurrency slot back.

A key and tenant with no limits, budget or tier have no policy: admission returns at once, no Redis call.

Redis down: limits fail open (a warning in the log) — a lost counter is better than a refused service — but a
call that needs a budget check answers 503 with Retry-After rather than risk overspending. Embedded mode (no
Redis) counts in the API process and reads spend from the database (`embedded.py`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
import orjson
import redis
import redis.asyncio
import structlog
from redis.exceptions import RedisError

from switchyard.core.config import AppConfig
from switchyard.core.db import Database
from switchyard.core.errors import BudgetExceeded, RateLimited, ServiceUnavailable
from switchyard.observability import metrics
from switchyard.tenancy.quotas import repository
from switchyard.tenancy.quotas.embedded import LocalCounts
from switchyard.tenancy.quotas.estimate import Estimate
from switchyard.tenancy.quotas.policy import Policy, Scope, policy_of, resolve, tiers_of
from switchyard.tenancy.quotas.scripts import ADMIT, PREFIX, SETTLE
from switchyard.tenancy.quotas.windows import BudgetWindow, Counter, budget_windows, counter, ratelimit_headers
from switchyard.tenancy.service import Principal

log = structlog.get_logger(__name__)

NANO = 1_000_000_000
# How long a reservation holds when its task never ends (its process died before committing it, say): the
# next admissions release it then. Longer than any task should take; a task outliving it still settles its
# real cost.
DEFAULT_RESERVATION_TTL_S = 6 * 3600.0


def nanos(usd: float) -> int:
    return math.ceil(usd * NANO - 1e-6)


@dataclass
class Request:
    """One admission as the script takes it, and what is needed to read its answer."""

    task_id: str
    estimate: Estimate | None
    counters: list[Counter] = field(default_factory=list)
    tokens_counted: bool = False
    concurrency: list[tuple[str, int, Scope]] = field(default_factory=list)
    budgets: list[tuple[Scope, BudgetWindow, float]] = field(default_factory=list)
    now: float = 0.0

    @property
    def keeps_record(self) -> bool:
        return self.tokens_counted or bool(self.concurrency) or bool(self.budgets)

    def payload(self, ttl_s: float) -> bytes:
        cost = nanos(self.estimate.cost_usd) if self.estimate and self.budgets else 0
        return orjson.dumps(
            {
                "id": self.task_id,
                "now": int(self.now * 1000),
                "exp": int((self.now + ttl_s) * 1000),
                "n": cost,
                "c": [
                    [c.key, self.estimate.tokens if c.kind == "tokens" and self.estimate else 1, c.limit, c.ttl_s]
                    + ([1] if c.kind == "tokens" else [0])
                    for c in self.counters
                ],
                "q": [[key, limit] for key, limit, _ in self.concurrency],
                "b": [
                    [w.spent_key(s.name), w.reserved_key(s.name), nanos(cap), w.ttl_s(self.now)]
                    for s, w, cap in self.budgets
                ],
            }
        )


@dataclass(frozen=True)
class Admitted:
    """An admitted call: what its task row records (`tasks.admission`; None when there is nothing to settle)
    and the `x-ratelimit-*` headers its response carries."""

    record: dict[str, Any] | None
    headers: dict[str, str]


NOTHING = Admitted(None, {})


def _as_list(value: Any) -> list[Any]:
    # cjson encodes an empty Lua table as {}.
    return value if isinstance(value, list) else []


class Quotas:
    """Enforcement for one process (API or worker), over Redis, or counted locally in embedded mode."""

    def __init__(
        self,
        config: AppConfig,
        db: Database,
        client: redis.Redis | None,
        aclient: redis.asyncio.Redis | None = None,
        *,
        reservation_ttl_s: float = DEFAULT_RESERVATION_TTL_S,
    ) -> None:
        self.config = config
        self.db = db
        self.tiers = tiers_of(config.tiers)
        self.ttl_s = reservation_ttl_s
        self.client = client
        self._admit = client.register_script(ADMIT) if client is not None else None
        self._settle = client.register_script(SETTLE) if client is not None else None
        self._aadmit = aclient.register_script(ADMIT) if aclient is not None else None
        self.local = LocalCounts(db) if client is None else None

    def policy(self, principal: Principal) -> Policy | None:
        """What applies to the caller; None (the common case) when nothing does."""
        return policy_of(principal, self.tiers)

    # --- building an admission ----------------------------------------------------------------------------------

    def request(
        self,
        policy: Policy,
        task_id: str,
        estimate: Estimate | None,
        *,
        requests: bool = True,
        tasks: bool = True,
        budgets: bool = True,
    ) -> Request:
        """The windows a call takes: `requests` counts it against rpm/rph/rpd; `tasks` against tpm and
        max_concurrent (it becomes a task that ends); `budgets` reserves its worst case. A call over
        `max_per_call_usd` is refused here, with no Redis call."""
        now = time.time()
        req = Request(task_id, estimate, now=now)
        if budgets and estimate is not None:
            cap = policy.max_per_call_usd()
            if cap is not None and estimate.cost_usd > cap:
                metrics.refused("max_per_call_usd")
                raise BudgetExceeded(
                    f"this call may cost up to ${estimate.cost_usd:.6f}, over the ${cap:.6f} allowed per call "
                    "(max_per_call_usd); lower max_tokens or the prompt",
                    code="max_per_call_usd",
                )
        windows = budget_windows(now)
        for scope in policy.scopes:
            limits, budget = scope.limits, scope.budget
            if limits is not None and requests:
                for name in ("rpm", "rph", "rpd"):
                    value = getattr(limits, name)
                    if value is not None:
                        req.counters.append(counter(scope.name, name, value, now))
            if limits is not None and tasks:
                if limits.tpm is not None and estimate is not None:
                    req.counters.append(counter(scope.name, "tpm", limits.tpm, now))
                    req.tokens_counted = True
                if limits.max_concurrent is not None:
                    req.concurrency.append((f"{PREFIX}{scope.name}:conc", limits.max_concurrent, scope))
            if budget is not None and budgets and estimate is not None:
                for window in windows:
                    cap = budget.daily_usd if window.name == "daily" else budget.monthly_usd
                    if cap is not None:
                        req.budgets.append((scope, window, cap))
        return req

    # --- admitting ----------------------------------------------------------------------------------------------

    def admit(self, req: Request) -> Admitted:
        """Take the request's windows, or raise RateLimited / BudgetExceeded (blocking: a thread or a worker)."""
        if not req.counters and not req.concurrency and not req.budgets:
            return NOTHING
        if self.local is not None:
            return self._answer(req, self.local.admit(req))
        assert self._admit is not None
        try:
            for _ in range(3):
                raw = self._admit(args=[req.payload(self.ttl_s)])
                answer = orjson.loads(raw)
                if "seed" not in answer:
                    return self._answer(req, answer)
                self._seed(req, answer["seed"])
        except RedisError as exc:
            return self._redis_down(req, exc)
        raise ServiceUnavailable("budget counters could not be seeded; try again")

    async def admit_async(self, req: Request) -> Admitted:
        """`admit` from an event loop: one EVALSHA round trip (a seed, once per window, reads Postgres in a
        thread)."""
        if not req.counters and not req.concurrency and not req.budgets:
            return NOTHING
        if self._aadmit is None:
            if self.local is not None and not req.concurrency and not req.budgets:
                return self.admit(req)  # in-memory counters only: no I/O
            return await anyio.to_thread.run_sync(self.admit, req)
        try:
            for _ in range(3):
                answer = orjson.loads(await self._aadmit(args=[req.payload(self.ttl_s)]))
                if "seed" not in answer:
                    return self._answer(req, answer)
                await anyio.to_thread.run_sync(self._seed, req, answer["seed"])
        except RedisError as exc:
            return self._redis_down(req, exc)
        raise ServiceUnavailable("budget counters could not be seeded; try again")

    def _seed(self, req: Request, keys: list[str]) -> None:
        """A budget window's spend that Redis does not have (the window's first call, or Redis lost it) comes
        from Postgres; SET NX, so a concurrent seed or settlement that got there first wins."""
        assert self.client is not None
        wanted = set(keys)
        with self.db.sessions() as session:
            for scope, window, _ in req.budgets:
                key = window.spent_key(scope.name)
                if key in wanted:
                    usd = repository.spent_usd(session, scope.kind, scope.id, window.start, window.end)
                    self.client.set(key, round(usd * NANO), nx=True, ex=window.ttl_s(req.now))
                    wanted.discard(key)

    def _redis_down(self, req: Request, exc: Exception) -> Admitted:
        if req.budgets:
            raise ServiceUnavailable("the budget counters are unavailable (redis); try again", retry_after_s=5) from exc
        log.warning("limits_unenforced", reason="redis unavailable", error=str(exc))
        return NOTHING

    def _answer(self, req: Request, answer: dict[str, Any]) -> Admitted:
        values = [int(v) for v in _as_list(answer.get("v"))]
        headers = ratelimit_headers(req.counters, values) if values else {}
        if answer.get("ok") == 1:
            record = None
            if req.keeps_record:
                assert req.estimate is not None or not req.budgets
                record = {
                    "tokens": req.estimate.tokens if req.estimate and req.tokens_counted else 0,
                    "reserved_usd": req.estimate.cost_usd if req.estimate and req.budgets else 0.0,
                    "concurrent": bool(req.concurrency),
                    "scopes": sorted({s.name for s, _, _ in req.budgets} | {s.name for _, _, s in req.concurrency}),
                    "at": int(req.now),
                }
            return Admitted(record, headers)
        budgets = _as_list(answer.get("fb"))
        if budgets:
            scope, window, cap = req.budgets[int(budgets[0])]
            error: RateLimited = BudgetExceeded(
                f"the {window.name} budget of {scope.kind} {scope.id} (${cap:g}) is spent or reserved by calls in "
                f"flight; it resets at {window.end.isoformat()}",
                code=f"{window.name}_usd",
            )
            retry_after = window.end.timestamp() - req.now
        else:
            failed = [req.counters[int(i)] for i in _as_list(answer.get("fc"))]
            busy = [req.concurrency[int(i)] for i in _as_list(answer.get("fq"))]
            parts = [f"{c.key.split(':')[-2]} {c.limit} on {_scope_text(c.key)}" for c in failed]
            parts += [f"max_concurrent {limit} on {scope.kind} {scope.id}" for _, limit, scope in busy]
            error = RateLimited("rate limit reached: " + ", ".join(parts), code="rate_limit_exceeded")
            retry_after = max([c.reset_s for c in failed] + ([1.0] if busy else []))
        error.headers.update(headers)
        error.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
        metrics.refused(error.code or error.type)
        raise error

    # --- settling -----------------------------------------------------------------------------------------------

    def settle(self, task_id: str, cost_usd: float, tokens: int | None) -> None:
        """The task has ended: its reservation becomes its real cost, its token window its real usage, its
        concurrency slot is free. Once per task however often it is called; never raises."""
        if self._settle is None:
            return  # embedded mode: the database is the count
        try:
            self._settle(args=[task_id, max(0, round(cost_usd * NANO)), -1 if tokens is None else tokens])
        except RedisError:
            # The reservation lapses at its expiry; Postgres keeps the cost for the next seed.
            log.warning("settle_failed", task_id=task_id, exc_info=True)

    def release(self, task_id: str) -> None:
        """An admitted call whose task was never stored: give everything back."""
        if self.local is not None:
            self.local.forget(task_id)
        self.settle(task_id, 0.0, 0)

    # --- reading ------------------------------------------------------------------------------------------------

    def budget_report(self, principal: Principal) -> dict[str, Any]:
        """GET /v1/budget: for the caller's key and its tenant, each window's limit, spent, reserved, left and
        when it resets (blocking)."""
        now = time.time()
        windows = budget_windows(now)
        key_part = (principal.limits, principal.budget, principal.tier)
        tenant_part = (principal.tenant_limits, principal.tenant_budget, principal.tenant_tier)
        scopes = [
            ("key", principal.key_id, *resolve(*key_part, dict(self.tiers)), principal.tier),
            ("tenant", principal.tenant_id, *resolve(*tenant_part, dict(self.tiers)), principal.tenant_tier),
        ]
        report: dict[str, Any] = {}
        with self.db.sessions() as session:
            for kind, scope_id, limits, budget, tier in scopes:
                scope = Scope(kind, scope_id, limits, budget)  # type: ignore[arg-type]
                shown: dict[str, Any] = {
                    "id": scope_id,
                    "tier": tier,
                    "limits": limits.model_dump(exclude_none=True) if limits else {},
                    "max_per_call_usd": budget.max_per_call_usd if budget else None,
                    "windows": {},
                }
                for window in windows:
                    cap = (budget.daily_usd if window.name == "daily" else budget.monthly_usd) if budget else None
                    spent, reserved = self._window(session, scope, window, counted=cap is not None, now=now)
                    shown["windows"][window.name] = {
                        "limit_usd": cap,
                        "spent_usd": round(spent, 9),
                        "reserved_usd": round(reserved, 9),
                        "left_usd": None if cap is None else round(max(0.0, cap - spent - reserved), 9),
                        "resets_at": window.end.isoformat().replace("+00:00", "Z"),
                    }
                report[kind] = shown
        return report

    def _window(
        self, session: Any, scope: Scope, window: BudgetWindow, *, counted: bool, now: float
    ) -> tuple[float, float]:
        if self.client is None or not counted:
            spent = repository.spent_usd(session, scope.kind, scope.id, window.start, window.end)
            if self.local is None:
                return spent, 0.0
            held = repository.held_usd(session, scope.kind, scope.id, window.start, window.end)
            return spent, held + self.local.pending_usd(scope.name)
        spent_key, reserved_key = window.spent_key(scope.name), window.reserved_key(scope.name)
        raw_spent, raw_reserved = self.client.mget([spent_key, reserved_key])
        if raw_spent is None:
            usd = repository.spent_usd(session, scope.kind, scope.id, window.start, window.end)
            self.client.set(spent_key, round(usd * NANO), nx=True, ex=window.ttl_s(now))
            raw_spent = self.client.get(spent_key)
        return int(raw_spent or 0) / NANO, max(0, int(raw_reserved or 0)) / NANO


def _scope_text(key: str) -> str:
    """`sy:q:k:key_1:rpm:123` -> `key key_1`."""
    kind, scope_id = key[len(PREFIX) :].split(":")[:2]
    return f"{'key' if kind == 'k' else 'tenant'} {scope_id}"
