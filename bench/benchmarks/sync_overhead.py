"""sync_overhead: what `/v1/chat/completions` adds to a call, against what LiteLLM's proxy adds, same run.

Four paths make the same chat call, one at a time, from this process with the official openai SDK (or
LiteLLM's own client), to the fake provider answering at once:
- direct:  the SDK calls the fake itself;
- ours:    the SDK calls Switchyard's /v1/chat/completions (API process -> task row -> broker -> provider
           worker -> fake -> result row -> Redis wake-up -> API), one provider worker;
- proxy:   the SDK calls LiteLLM's proxy (`litellm --config ... --num_workers 1`, no database, a master key),
           one deployment on the fake, retries off: the baseline of the ratio;
- router:  litellm.Router.completion in this process, same deployment (reported, not the ratio's baseline).
Each round runs every path in turn (interleaved, so drifting load hits all of them); the added p50 of a path
is its p50 minus the direct p50 of the same round. Ratio = ours added / proxy added (target <= 1.0).
LiteLLM is a bench-only dependency: pip install -e '.[bench]'.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import openai

from bench.harness import BenchError, Env, log
from bench.registry import Benchmark, Options, Result, Row, standard_row
from bench.stack import LITELLM_MODEL, LiteLLMProxy, Switchyard, litellm_missing, wait_worker
from tests.processes import cli

REDIS_DB = 5
MESSAGES = [{"role": "user", "content": "Say hello in one word."}]


@dataclass(frozen=True)
class Sizes:
    rounds: int
    calls_per_round: int
    warmup_calls: int


FULL = Sizes(rounds=4, calls_per_round=200, warmup_calls=30)
QUICK = Sizes(rounds=2, calls_per_round=40, warmup_calls=10)


def _timed_ms(call: Callable[[], object], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


def _litellm_router(fake_url: str) -> Any:
    # No price-map download (no internet here) and no telemetry: both would be work LiteLLM does only at start.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    return litellm.Router(  # type: ignore[attr-defined]
        model_list=[
            {
                "model_name": LITELLM_MODEL,
                "litellm_params": {"model": "openai/gpt-4o-mini", "api_base": f"{fake_url}/v1", "api_key": "fake"},
            }
        ],
        num_retries=0,
    )


def run(opts: Options) -> Result:
    """Interleaved rounds of sequential calls on every path; medians of the per-round added p50s."""
    sz = opts.sizes("sync_overhead", FULL, QUICK)
    missing = litellm_missing()
    if missing:
        raise BenchError(missing)
    env = Env("sync_overhead", REDIS_DB, opts.tmp / "sync_overhead")
    try:
        stack = Switchyard(env, fake_latency_ms=0)
        worker = env.start(
            "worker-provider", cli("worker", "--queues", "provider", "--concurrency", "64", "--loglevel", "INFO")
        )
        wait_worker(worker)
        proxy = LiteLLMProxy(env, stack.fake_url)
        direct = openai.OpenAI(base_url=f"{stack.fake_url}/v1", api_key="fake", max_retries=0)
        ours = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=stack.key, max_retries=0)
        via_proxy = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=proxy.key, max_retries=0)
        router = _litellm_router(stack.fake_url)
        paths: dict[str, Callable[[], object]] = {
            "direct": lambda: direct.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES),  # type: ignore[arg-type]
            "ours": lambda: ours.chat.completions.create(model="chat-default", messages=MESSAGES),  # type: ignore[arg-type]
            "proxy": lambda: via_proxy.chat.completions.create(model=LITELLM_MODEL, messages=MESSAGES),  # type: ignore[arg-type]
            "router": lambda: router.completion(model=LITELLM_MODEL, messages=MESSAGES),
        }
        # Our answer must be the fake's, through a task; the proxy's the fake's too: check before timing anything.
        answer = ours.chat.completions.with_raw_response.create(model="chat-default", messages=MESSAGES)  # type: ignore[arg-type]
        if "x-switchyard-task-id" not in answer.headers or not answer.parse().choices[0].message.content:
            raise BenchError("our /v1/chat/completions did not answer through a task")
        if not via_proxy.chat.completions.create(model=LITELLM_MODEL, messages=MESSAGES).choices[0].message.content:  # type: ignore[arg-type]
            raise BenchError("LiteLLM's proxy answered without content")
        for call in paths.values():
            _timed_ms(call, sz.warmup_calls)
        per_round = []
        for r in range(sz.rounds):
            p50 = {name: statistics.median(_timed_ms(call, sz.calls_per_round)) for name, call in paths.items()}
            row = {
                **{f"{k}_p50_ms": round(v, 3) for k, v in p50.items()},
                **{f"{k}_added_ms": round(p50[k] - p50["direct"], 3) for k in ("ours", "proxy", "router")},
            }
            per_round.append(row)
            log(f"  round {r + 1}: {row}")
        added = {k: statistics.median(r[f"{k}_added_ms"] for r in per_round) for k in ("ours", "proxy", "router")}
        tasks = stack.count("SELECT count(*) FROM tasks WHERE status = 'succeeded'")
        return {
            "ours": round(added["ours"], 3),
            "baseline": round(added["proxy"], 3),
            "unit": "ms added",
            "ratio": round(added["ours"] / added["proxy"], 3) if added["proxy"] > 0 else float("inf"),
            "target": 1.0,
            "target_kind": "<=",
            "router": {
                "added_ms": round(added["router"], 3),
                # None when the Router added nothing measurable (noise can make the difference negative).
                "ratio": round(added["ours"] / added["router"], 3) if added["router"] > 0 else None,
            },
            "direct_p50_ms": statistics.median(r["direct_p50_ms"] for r in per_round),
            "rounds": per_round,
            "sizes": asdict(sz),
            "tasks_recorded": tasks,
        }
    finally:
        env.close()


def rows(name: str, res: Result) -> list[Row]:
    """Ours vs the proxy (the target), then vs the in-process Router (reported)."""
    router = res["router"]
    return [
        standard_row(f"{name} vs LiteLLM proxy (HTTP)", res, decimals=1),
        ("  vs LiteLLM Router (in process)", f"{res['ours']:.1f} ms added", f"{router['added_ms']:.1f} ms added",
         f"{router['ratio']:.2f}x" if router["ratio"] is not None else "n/a", "-", "supporting, no target"),
    ]  # fmt: skip


def details(res: Result) -> None:
    """The p50s behind the added figures."""
    last = res["rounds"][-1]
    print(
        f"sync_overhead: {res['sizes']['rounds']} rounds x {res['sizes']['calls_per_round']} sequential calls per "
        f"path, interleaved; direct p50 {res['direct_p50_ms']:.1f} ms; last round p50s: ours "
        f"{last['ours_p50_ms']:.1f}, proxy {last['proxy_p50_ms']:.1f}, router {last['router_p50_ms']:.1f} ms; "
        f"{res['tasks_recorded']} tasks recorded"
    )


BENCHMARK = Benchmark(
    name="sync_overhead",
    summary="sequential p50 added over the fake by /v1/chat/completions vs LiteLLM's proxy (<= 1.0x)",
    run=run,
    rows=rows,
    details=details,
)
