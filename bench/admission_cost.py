"""CPU of admission and settlement in the calling process, per call: a key and tenant with limits (rpm, tpm,
max_concurrent) and a budget (per call, daily, monthly), against a Redis server; and the no-policy path.

    .venv/bin/python -m bench.admission_cost [--redis redis://127.0.0.1:6379/5] [-n 5000]

The Redis DB is flushed. The figures are the client side (building the request, one EVALSHA, reading the
answer); Redis's own time is the script's, reported by `INFO commandstats`.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import redis
import redis.asyncio

from switchyard.core.config import AppConfig
from switchyard.core.policy import Budget, Limits
from switchyard.tenancy.quotas.estimate import Estimate
from switchyard.tenancy.quotas.service import Quotas
from switchyard.tenancy.quotas.windows import budget_windows
from switchyard.tenancy.service import Principal

LIMITS = Limits(rpm=10**9, tpm=10**12, max_concurrent=10**6)
BUDGET = Budget(max_per_call_usd=100, daily_usd=10**6, monthly_usd=10**7)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/5")
    parser.add_argument("-n", type=int, default=5000)
    args = parser.parse_args()
    client = redis.Redis.from_url(args.redis)
    client.flushdb()
    client.config_resetstat()
    quotas = Quotas(AppConfig(), None, client, redis.asyncio.Redis.from_url(args.redis))  # type: ignore[arg-type]
    principal = Principal(
        "ten_b", "member", "key_b", limits=LIMITS, budget=BUDGET, tenant_limits=LIMITS, tenant_budget=BUDGET
    )
    plain = Principal("ten_p", "member", "key_p")
    for window in budget_windows(time.time()):  # seeded, as after a window's first call
        for scope in ("k:key_b", "t:ten_b"):
            client.set(window.spent_key(scope), 0)
    est = Estimate(tokens=300, cost_usd=0.0002)
    n = args.n

    def measure(label: str, fn: Any) -> None:
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        print(f"{label:52} {cpu / n * 1e6:7.1f} us CPU/call   {wall / n * 1e6:7.1f} us wall/call")

    def no_policy() -> None:
        for _ in range(n):
            assert quotas.policy(plain) is None

    def admit_sync() -> None:
        for i in range(n):
            policy = quotas.policy(principal)
            assert policy is not None
            quotas.admit(quotas.request(policy, f"s{i}", est))

    def settle() -> None:
        for i in range(n):
            quotas.settle(f"s{i}", 0.0001, 120)

    async def admit_async_loop() -> None:
        for i in range(n):
            policy = quotas.policy(principal)
            assert policy is not None
            await quotas.admit_async(quotas.request(policy, f"a{i}", est))

    measure("no policy (no Redis call)", no_policy)
    measure("admission, key + tenant limits and budgets (sync)", admit_sync)
    measure("settlement (sync)", settle)
    measure("admission, key + tenant limits and budgets (async)", lambda: asyncio.run(admit_async_loop()))
    stats = client.info("commandstats")
    for name in ("cmdstat_evalsha", "cmdstat_eval"):
        if name in stats:
            print(f"redis {name}: {stats[name]}")


if __name__ == "__main__":
    main()
