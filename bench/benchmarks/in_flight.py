"""in_flight: N chat tasks queued, the fake answering after a long latency, one provider worker process allowed
`max_in_flight` calls at once (SWITCHYARD_MAX_IN_FLIGHT in its environment, `--concurrency` as today): the
completion rate vs the ideal max_in_flight / latency (target >= 0.8x), the peak of tasks running at once, and
the worker's RSS growth per in-flight call (target <= 0.5 MB).

Two variants, each on a fresh stack: the headline (6,000 tasks, 10 s, 2,000 in flight) and the earlier
1 s / 500 one (2,000 tasks), reported alongside. `--set in_flight.n=...` etc. change the sizes.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import psycopg

from bench.harness import BenchError, Env, Profiler, Sampler, cpu_seconds, log, rss_mb, sql_one, wait_until
from bench.registry import Benchmark, Options, Result, Row, standard_row
from bench.stack import MAX_IN_FLIGHT_ENV, POOL, Switchyard, wait_worker

REDIS_DB = 14
RSS_TARGET_MB = 0.5


@dataclass(frozen=True)
class Sizes:
    n: int
    latency_ms: int
    max_in_flight: int
    short_n: int
    short_latency_ms: int
    short_max_in_flight: int
    # The worker's --concurrency, as `switchyard worker` defaults it for the provider queue today.
    concurrency: int


FULL = Sizes(
    n=6000, latency_ms=10_000, max_in_flight=2000, short_n=2000, short_latency_ms=1000, short_max_in_flight=500,
    concurrency=500,
)  # fmt: skip
QUICK = Sizes(
    n=600, latency_ms=2000, max_in_flight=200, short_n=300, short_latency_ms=500, short_max_in_flight=100,
    concurrency=500,
)  # fmt: skip


def _variant(opts: Options, label: str, n: int, latency_ms: int, max_in_flight: int, concurrency: int) -> Result:
    """One fresh stack: queue n tasks, start the worker, sample running/succeeded and RSS until all succeeded."""
    ideal = max_in_flight / (latency_ms / 1000)
    env = Env(f"inflight_{label}", REDIS_DB, opts.tmp / f"inflight-{label}")
    try:
        ours = Switchyard(env, fake_latency_ms=latency_ms)
        created_s = ours.create_tasks(n)
        log(f"  in_flight {label}: {n} tasks queued in {created_s:.1f}s; starting the provider worker "
            f"({concurrency} {POOL}, {MAX_IN_FLIGHT_ENV}={max_in_flight})")  # fmt: skip
        worker = ours.start_worker(concurrency, max_in_flight=max_in_flight)
        t_ready = wait_worker(worker)
        rss_ready = rss_mb(worker.pid)
        cpu0 = cpu_seconds(worker.pid)
        peaks = {"running": 0, "rss": rss_ready, "succeeded": 0, "failed": 0}
        series: list[tuple[float, int, int, float]] = []
        conn = psycopg.connect(env.database_url, autocommit=True)

        def sample() -> None:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE status='running'), count(*) FILTER (WHERE status='succeeded'),"
                " count(*) FILTER (WHERE status='failed') FROM tasks"
            ).fetchone()
            assert row is not None
            rss = rss_mb(worker.pid)
            series.append((round(time.monotonic() - t_ready, 2), row[0], row[1], round(rss, 1)))
            peaks["running"] = max(peaks["running"], row[0])
            peaks["rss"] = max(peaks["rss"], rss)
            peaks["succeeded"], peaks["failed"] = row[1], row[2]

        sampler = Sampler(sample, 0.1)
        prof = Profiler(opts.profile, worker.pid, f"inflight-worker-{label}", 600)
        # Generous: today's worker may be far from the ideal, and the run must still end with figures.
        timeout = max(300.0, 10 * n / ideal + 3 * latency_ms / 1000)
        try:

            def finished() -> bool:
                if peaks["failed"]:
                    raise BenchError(f"{peaks['failed']} tasks failed:\n{worker.log()[-3000:]}")
                if not worker.alive():
                    raise BenchError(f"worker died:\n{worker.log()[-3000:]}")
                return peaks["succeeded"] >= n

            wait_until(finished, timeout=timeout, interval=0.05, what=f"{n} succeeded tasks")
        finally:
            sampler.stop()
            prof.stop()
            conn.close()
        t_done = time.monotonic()
        rss_after = rss_mb(worker.pid)
        cpu_ms = 1000 * (cpu_seconds(worker.pid) - cpu0) / n
        window = ours.window_s()
        call_ms = sql_one(
            env.database_url,
            "SELECT json_build_array(avg(latency_ms), percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms),"
            " max(latency_ms)) FROM attempts",
        )
        try:
            fake_calls = httpx.get(f"{ours.fake_url}/control/stats", timeout=5).json().get("total")
        except (httpx.HTTPError, ValueError):
            fake_calls = None
        rate = n / window
        growth = peaks["rss"] - rss_ready
        log(f"  in_flight {label}: {rate:.0f} tasks/s vs ideal {ideal:.0f}/s, peak {peaks['running']} running, "
            f"RSS {rss_ready:.0f} -> {peaks['rss']:.0f} MB")  # fmt: skip
        return {
            "ours": rate,
            "baseline": ideal,
            "unit": "tasks/s",
            "ratio": rate / ideal,
            "target": 0.8,
            "target_kind": ">=",
            "n": n,
            "concurrency": concurrency,
            "max_in_flight": max_in_flight,
            "latency_ms": latency_ms,
            "window_s": window,
            "from_ready": {"seconds": t_done - t_ready, "rate": n / (t_done - t_ready)},
            "peak_running": peaks["running"],
            # Little's law at the provider: how many calls were really outstanding there, on average.
            "effective_in_flight_at_provider": rate * latency_ms / 1000,
            "rss_mb": {"ready": rss_ready, "peak": peaks["rss"], "after": rss_after},
            "rss_growth_per_in_flight_mb": growth / peaks["running"] if peaks["running"] else None,
            "rss_target_mb": RSS_TARGET_MB,
            "fake_calls": fake_calls,
            "worker_cpu_ms_per_task": cpu_ms,
            "provider_call_ms": {"mean": call_ms[0], "p50": call_ms[1], "max": call_ms[2]},
            "sampler_errors": sampler.errors[:5],
            "series": series,
            "create_s": created_s,
        }
    finally:
        env.close()


def run(opts: Options) -> Result:
    """The headline variant, then the 1 s / 500 one."""
    sz = opts.sizes("in_flight", FULL, QUICK)
    head = _variant(opts, "headline", sz.n, sz.latency_ms, sz.max_in_flight, sz.concurrency)
    short = _variant(opts, "short", sz.short_n, sz.short_latency_ms, sz.short_max_in_flight, sz.concurrency)
    return {**head, "sizes": asdict(sz), "short": short}


def _label(v: dict[str, Any]) -> str:
    return f"{v['n']} tasks, {v['latency_ms'] / 1000:g} s, {v['max_in_flight']} in flight"


def rows(name: str, res: Result) -> list[Row]:
    """Rate vs ideal for both variants, and the RSS per in-flight call of the headline."""
    out = [
        standard_row(f"{name}: {_label(res)}", res, baseline_note=" (ideal)"),
        standard_row(f"  {_label(res['short'])}", res["short"], baseline_note=" (ideal)"),
    ]
    per = res["rss_growth_per_in_flight_mb"]
    if per is not None:
        met = "met" if per <= RSS_TARGET_MB else "NOT met"
        out.append(("  worker RSS per in-flight call", f"{per:.3f} MB", "-", "-", f"<={RSS_TARGET_MB} MB", met))
    return out


def details(res: Result) -> None:
    """Peak running, provider call time, worker CPU and RSS, per variant."""
    for v in (res, res["short"]):
        rss, per = v["rss_mb"], v["rss_growth_per_in_flight_mb"]
        per_text = f"{per:.3f} MB per in-flight call" if per is not None else "no call seen running"
        print(
            f"in_flight ({_label(v)}): peak {v['peak_running']} running at once; provider call "
            f"{v['provider_call_ms']['p50']:.0f} ms p50 (~{v['effective_in_flight_at_provider']:.0f} calls really "
            f"outstanding at the fake); worker CPU {v['worker_cpu_ms_per_task']:.2f} ms/task; RSS "
            f"{rss['ready']:.0f} MB at ready -> {rss['peak']:.0f} MB peak: {per_text}"
        )


BENCHMARK = Benchmark(
    name="in_flight",
    summary="6,000 chat tasks, fake 10 s, 2,000 in flight: rate vs ideal (>= 0.8x), RSS/call (<= 0.5 MB)",
    run=run,
    rows=rows,
    details=details,
)
