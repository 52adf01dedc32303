"""Sync overhead: what `/v1/chat/completions` adds to a call, against what LiteLLM's Router adds, same run.

    .venv/bin/python -m bench.run --only sync_overhead [--quick]

Three paths make the same chat call, one at a time, from this process with the official openai SDK (or
LiteLLM's own client), to the fake provider answering at once:
- direct:  the SDK calls the fake itself;
- ours:    the SDK calls Switchyard's /v1/chat/completions (API process -> task row -> broker -> provider
           worker -> fake -> result row -> Redis wake-up -> API), one provider worker;
- litellm: litellm.Router.completion in this process, one deployment on the fake, retries off.
Each round runs every path in turn (interleaved, so drifting load hits all three); the added p50 of a path
is its p50 minus the direct p50 of the same round. Ratio = ours added / LiteLLM added (target <= 1.0).
LiteLLM is a bench-only dependency: pip install -e '.[bench]'.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai

from bench.harness import BenchError, Env, wait_log
from tests.processes import cli

REDIS_DB = 5
MESSAGES = [{"role": "user", "content": "Say hello in one word."}]


def _p50_ms(call: Callable[[], object], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


def _litellm_router(fake_url: str) -> Any:
    # No price-map download (no internet here) and no telemetry: both would be work LiteLLM does only at start.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        import litellm
    except ImportError as exc:
        raise BenchError("LiteLLM is not installed: pip install -e '.[bench]'") from exc
    litellm.telemetry = False
    litellm.suppress_debug_info = True
    return litellm.Router(  # type: ignore[attr-defined]
        model_list=[
            {
                "model_name": "chat-default",
                "litellm_params": {"model": "openai/gpt-4o-mini", "api_base": f"{fake_url}/v1", "api_key": "fake"},
            }
        ],
        num_retries=0,
    )


def bench_sync_overhead(tmp: Path, quick: bool, profile: bool) -> dict[str, Any]:
    from bench.run import Switchyard, log  # the runner imports this module

    rounds, n, warm = (2, 40, 10) if quick else (4, 200, 30)
    env = Env("sync_overhead", REDIS_DB, tmp / "sync_overhead")
    try:
        ours_stack = Switchyard(env, fake_latency_ms=0)
        worker = env.start(
            "worker-provider", cli("worker", "--queues", "provider", "--concurrency", "64", "--loglevel", "INFO")
        )
        wait_log(worker, "ready.")
        direct = openai.OpenAI(base_url=f"{ours_stack.fake_url}/v1", api_key="fake", max_retries=0)
        ours = openai.OpenAI(base_url=f"{ours_stack.url}/v1", api_key=ours_stack.key, max_retries=0)
        router = _litellm_router(ours_stack.fake_url)
        paths: dict[str, Callable[[], object]] = {
            "direct": lambda: direct.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES),  # type: ignore[arg-type]
            "ours": lambda: ours.chat.completions.create(model="chat-default", messages=MESSAGES),  # type: ignore[arg-type]
            "litellm": lambda: router.completion(model="chat-default", messages=MESSAGES),
        }
        # Our answer must be the fake's, through a task: check once before timing anything.
        answer = ours.chat.completions.with_raw_response.create(model="chat-default", messages=MESSAGES)  # type: ignore[arg-type]
        if "x-switchyard-task-id" not in answer.headers or not answer.parse().choices[0].message.content:
            raise BenchError("our /v1/chat/completions did not answer through a task")
        for call in paths.values():
            _p50_ms(call, warm)
        per_round = []
        for r in range(rounds):
            p50 = {name: statistics.median(_p50_ms(call, n)) for name, call in paths.items()}
            row = {
                **{f"{k}_p50_ms": round(v, 3) for k, v in p50.items()},
                "ours_added_ms": round(p50["ours"] - p50["direct"], 3),
                "litellm_added_ms": round(p50["litellm"] - p50["direct"], 3),
            }
            per_round.append(row)
            log(f"  round {r + 1}: {row}")
        ours_added = statistics.median(r["ours_added_ms"] for r in per_round)
        litellm_added = statistics.median(r["litellm_added_ms"] for r in per_round)
        tasks = ours_stack.count("SELECT count(*) FROM tasks WHERE status = 'succeeded'")
        return {
            "name": "sync overhead: added p50 of /v1/chat/completions vs LiteLLM Router (openai SDK, fake 0 ms)",
            "ours": round(ours_added, 3),
            "baseline": round(litellm_added, 3),
            "unit": "ms added",
            "ratio": round(ours_added / litellm_added, 3) if litellm_added > 0 else float("inf"),
            "target": 1.0,
            "target_kind": "<=",
            "direct_p50_ms": statistics.median(r["direct_p50_ms"] for r in per_round),
            "rounds": per_round,
            "requests_per_path_per_round": n,
            "tasks_recorded": tasks,
        }
    finally:
        env.close()


if __name__ == "__main__":
    import json
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        print(json.dumps(bench_sync_overhead(Path(folder), "--quick" in sys.argv, False), indent=2))
