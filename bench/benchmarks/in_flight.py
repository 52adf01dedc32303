"""in_flight: N chat tasks queued, fake latency 1 s, one provider worker with 500 threads: the completion rate
vs the ideal 500/s (target >= 0.8x with >= 500 in flight); also the peak of tasks running at once and the
worker's RSS growth per in-flight call (target <= 0.5 MB).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import psycopg

from bench.harness import BenchError, Env, Profiler, Sampler, cpu_seconds, log, rss_mb, sql_one, wait_until
from bench.registry import Benchmark, Options, Result, Row, standard_row
from bench.stack import POOL, Switchyard, wait_worker

REDIS_DB = 14
RSS_TARGET_MB = 0.5


@dataclass(frozen=True)
class Sizes:
    n: int
    latency_ms: int
    # The worker's threads: the calls it can have in flight.
    concurrency: int


FULL = Sizes(n=2000, latency_ms=1000, concurrency=500)
QUICK = Sizes(n=1000, latency_ms=1000, concurrency=500)


def run(opts: Options) -> Result:
    """Queue n tasks, start the worker, sample running/succeeded and RSS until all succeeded."""
    sz = opts.sizes("in_flight", FULL, QUICK)
    n, latency_ms, concurrency = sz.n, sz.latency_ms, sz.concurrency
    ideal = concurrency / (latency_ms / 1000)
    env = Env("inflight", REDIS_DB, opts.tmp / "inflight")
    try:
        ours = Switchyard(env, fake_latency_ms=latency_ms)
        created_s = ours.create_tasks(n)
        log(f"  in_flight: {n} tasks queued in {created_s:.1f}s; starting the provider worker ({concurrency} {POOL})")
        worker = ours.start_worker(concurrency)
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
        prof = Profiler(opts.profile, worker.pid, "inflight-worker", 600)
        timeout = 300.0
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
        log(f"  in_flight: {rate:.0f} tasks/s vs ideal {ideal:.0f}/s, peak {peaks['running']} running, "
            f"RSS {rss_ready:.0f} -> {peaks['rss']:.0f} MB")  # fmt: skip
        return {
            "ours": rate,
            "baseline": ideal,
            "unit": "tasks/s",
            "ratio": rate / ideal,
            "target": 0.8,
            "target_kind": ">=",
            "n": n,
            "sizes": asdict(sz),
            "concurrency": concurrency,
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


def _label(v: dict[str, Any]) -> str:
    return f"{v['n']} tasks, {v['latency_ms'] / 1000:g} s, {v['concurrency']} threads"


def rows(name: str, res: Result) -> list[Row]:
    """Rate vs ideal, and the RSS per in-flight call."""
    out = [standard_row(f"{name}: {_label(res)}", res, baseline_note=" (ideal)")]
    per = res["rss_growth_per_in_flight_mb"]
    if per is not None:
        met = "met" if per <= RSS_TARGET_MB else "NOT met"
        out.append(("  worker RSS per in-flight call", f"{per:.3f} MB", "-", "-", f"<={RSS_TARGET_MB} MB", met))
    return out


def details(res: Result) -> None:
    """Peak running, provider call time, worker CPU and RSS."""
    for v in (res,):
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
    summary="chat tasks, fake 1 s, 500 threads: rate vs ideal (>= 0.8x), RSS per in-flight call (<= 0.5 MB)",
    run=run,
    rows=rows,
    details=details,
)
