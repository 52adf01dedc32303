"""ml_batching: POST /v1/predict/risk-classifier predictions/s at 64 clients, one ML worker (threads, 64) with
onnx micro-batching (max_batch_size 64, 2 ms) vs the same worker with max_batch_size 1 (target >= 3x).

Supporting, no target: the same stack unbatched with one ONNX Runtime intra-op thread, and
OnnxAdapter.predict from 64 threads in-process (three shipped models), batching on vs off.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench.harness import (
    ML_CONFIG,
    BenchError,
    Env,
    Profiler,
    cpu_seconds,
    load,
    log,
    machine_cpu_ticks,
    sql_one,
    wait_http,
    wait_until,
)
from bench.registry import Benchmark, Options, Result, Row, standard_row
from bench.stack import wait_worker
from switchyard.defaults import MODELS_DIR
from tests.processes import cli, free_port

REDIS_DB = 11


@dataclass(frozen=True)
class Sizes:
    warm_s: float
    measure_s: float
    rounds: int
    layer_warm_s: float
    layer_s: float


FULL = Sizes(warm_s=3.0, measure_s=10.0, rounds=2, layer_warm_s=1.0, layer_s=5.0)
QUICK = Sizes(warm_s=2.0, measure_s=4.0, rounds=1, layer_warm_s=0.5, layer_s=2.0)

ML_MODEL = "risk-classifier"
ML_CLIENTS = 64
# The onnx provider's options per side; the worker command line is the same for all. `baseline` and
# `batching` differ only in max_batch_size and make the headline ratio. `unbatched_1t` is supporting, with no
# target: unbatched with one ONNX Runtime intra-op thread, which does not spin between session runs.
ML_SIDES: dict[str, dict[str, int]] = {
    "baseline": {"max_batch_size": 1, "max_batch_wait_ms": 2},
    "batching": {"max_batch_size": 64, "max_batch_wait_ms": 2},
    "unbatched_1t": {"max_batch_size": 1, "max_batch_wait_ms": 2, "intra_op_threads": 1},
}
# In-process supporting figures: the stack's model, the 200-tree regressor, and the isolation forest (the
# shipped model whose single-row session run costs most).
ML_LAYER_MODELS = ("risk_classifier", "revenue_regressor", "anomaly_detector")


def _reference(model_file: str) -> tuple[str, list[list[float]]]:
    ref = json.loads((MODELS_DIR / f"{model_file}.reference.json").read_text())
    return ref["input"], ref["inputs"]


def _ml_stack_run(tmp: Path, side: str, rnd: int, warm_s: float, measure_s: float, profile: bool) -> dict[str, Any]:
    """One fresh stack (database, Redis DB 11, API, one ML worker) with `side`'s provider options, 64 clients."""
    options = ML_SIDES[side]
    env = Env(f"ml_{side}", REDIS_DB, tmp / f"ml-{side}-{rnd}")
    try:
        env.run_cli("migrate")
        config = env.tmp / "switchyard.yaml"
        provider_options = ", ".join(f"{k}: {v}" for k, v in options.items())
        config.write_text(
            ML_CONFIG.format(provider_options=provider_options, model_path=MODELS_DIR / "risk_classifier.onnx")
        )
        env.env["SWITCHYARD_CONFIG"] = str(config)
        url = f"http://127.0.0.1:{free_port()}"
        api = env.start("api", cli("api", "--port", url.rsplit(":", 1)[1]))
        wait_http(f"{url}/healthz", api)
        key = env.run_cli("keys", "create", "--tenant", "bench", "--role", "admin").strip().splitlines()[-1]
        worker = env.start(
            "worker-ml", cli("worker", "--queues", "ml", "--concurrency", str(ML_CLIENTS), "--loglevel", "INFO")
        )
        wait_worker(worker)

        name, rows = _reference("risk_classifier")
        body = json.dumps({"inputs": {name: [rows[0]]}}).encode()
        endpoint = f"{url}/v1/predict/{ML_MODEL}"
        import httpx

        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        first = httpx.post(endpoint, content=body, headers=headers, timeout=30)
        if first.status_code != 200 or "batch_size" not in first.json():
            raise BenchError(f"POST {endpoint} answered {first.status_code}: {first.text[:500]}")

        def drain() -> None:
            """The load tool drops its connections when it stops, but the API still waits for their tasks: wait
            until none is queued or running, so that the next phase does not start with 64 extra waits."""
            live = "SELECT count(*) FROM tasks WHERE status IN ('queued', 'running')"
            try:
                wait_until(lambda: sql_one(env.database_url, live) == 0, timeout=30, interval=0.1, what="drain")
            except BenchError:
                log("  warning: predict tasks still queued or running 30 s after the load stopped")
            time.sleep(0.5)  # the API answers them (to closed sockets) right after

        load(endpoint, auth=key, connections=ML_CLIENTS, seconds=warm_s, body=body)
        drain()
        t0 = sql_one(env.database_url, "SELECT now()")
        cpu0 = {"worker": cpu_seconds(worker.pid), "api": cpu_seconds(api.pid)}
        ticks0 = machine_cpu_ticks()
        prof = Profiler(profile and rnd == 0, worker.pid, f"ml-worker-{side}", measure_s)
        try:
            res = load(endpoint, auth=key, connections=ML_CLIENTS, seconds=measure_s, body=body)
        finally:
            prof.stop()
        ticks1 = machine_cpu_ticks()
        cpu = {"worker": cpu_seconds(worker.pid) - cpu0["worker"], "api": cpu_seconds(api.pid) - cpu0["api"]}
        t1 = sql_one(env.database_url, "SELECT now()")
        drain()

        ok = res.requests - res.non_2xx
        predictions = ok * 1  # one row per request
        window = "created_at >= %s AND created_at < %s"
        with psycopg.connect(env.database_url, autocommit=True) as conn:
            # Every response's batch_size is its task's result->>'batch_size': all tasks of the window.
            sizes = conn.execute(
                f"SELECT (result->>'batch_size')::int AS b, count(*) FROM tasks WHERE {window}"
                " AND status = 'succeeded' GROUP BY b ORDER BY b",
                (t0, t1),
            ).fetchall()
            statuses: dict[str, int] = dict(
                conn.execute(f"SELECT status, count(*) FROM tasks WHERE {window} GROUP BY status", (t0, t1)).fetchall()
            )
            timing = conn.execute(
                "SELECT avg(extract(epoch FROM started_at - created_at)) * 1000,"
                " avg(extract(epoch FROM finished_at - started_at)) * 1000"
                f" FROM tasks WHERE {window} AND status = 'succeeded'",
                (t0, t1),
            ).fetchone()
            calls = conn.execute(
                "SELECT avg(a.latency_ms), avg(a.compute_ms / greatest(a.predictions, 1)) FROM attempts a"
                " JOIN tasks t ON t.id = a.task_id WHERE t.created_at >= %s AND t.created_at < %s",
                (t0, t1),
            ).fetchone()
        assert timing is not None
        assert calls is not None
        hist = {int(b): int(n) for b, n in sizes if b is not None}
        answered = sum(hist.values())
        busy_s = (ticks1[0] - ticks0[0]) / os.sysconf("SC_CLK_TCK")
        result = {
            "side": side,
            "round": rnd,
            "provider_options": options,
            "load": asdict(res),
            "ok_responses": ok,
            "predictions_per_s": predictions / res.seconds,
            "worker_cpu_ms_per_prediction": 1000 * cpu["worker"] / max(1, predictions),
            "api_cpu_ms_per_prediction": 1000 * cpu["api"] / max(1, predictions),
            "worker_cpu_cores": cpu["worker"] / res.seconds,
            "api_cpu_cores": cpu["api"] / res.seconds,
            # Everything but the API and the worker: Postgres, Redis, the load tool, this runner.
            "other_cpu_cores": max(0.0, busy_s - cpu["worker"] - cpu["api"]) / res.seconds,
            "machine_busy_pct": 100.0 * (ticks1[0] - ticks0[0]) / max(1, ticks1[1] - ticks0[1]),
            "cores": os.cpu_count(),
            "batch_size_histogram": hist,
            "batch_size_mean": sum(b * n for b, n in hist.items()) / answered if answered else 0.0,
            "batch_size_max": max(hist) if hist else None,
            "tasks_in_window": statuses,
            # created_at -> started_at: the API's insert and publish, the broker, the worker's pick-up and claim.
            "queue_wait_ms_mean": float(timing[0] or 0),
            "execution_ms_mean": float(timing[1] or 0),
            # attempts.latency_ms: the adapter call, including the wait for a batch to form and run.
            "provider_call_ms_mean": float(calls[0] or 0),
            # attempts.compute_ms: this prediction's share (by rows) of its session run's wall time.
            "session_wall_ms_per_prediction": float(calls[1] or 0),
        }
        log(
            f"  ml_batching round {rnd + 1} {side:12} {provider_options}: "
            f"{result['predictions_per_s']:5.0f} pred/s  p50 {res.latency_p50_ms:.0f} ms  "
            f"p99 {res.latency_p99_ms:.0f} ms  non-2xx {res.non_2xx}  errors {res.errors}  "
            f"batch mean {result['batch_size_mean']:.2f} (max {result['batch_size_max']})  "
            f"worker CPU {result['worker_cpu_ms_per_prediction']:.2f} ms/pred"
        )
        if options["max_batch_size"] == 1 and hist and max(hist) > 1:
            raise BenchError(f"the max_batch_size 1 worker reported batches of {max(hist)}")
        return result
    finally:
        env.close()


def _inference_layer(model_file: str, max_batch_size: int, warm_s: float, measure_s: float) -> dict[str, Any]:
    """64 threads calling `OnnxAdapter.predict` with one row each, in this process, with no stack around it."""
    from switchyard.core.config import ProviderConfig
    from switchyard.providers.onnx_adapter import OnnxAdapter

    name, rows = _reference(model_file)
    path = str(MODELS_DIR / f"{model_file}.onnx")
    adapter = OnnxAdapter(ProviderConfig(kind="onnx", max_batch_size=max_batch_size, max_batch_wait_ms=2))
    try:
        adapter.predict(path, {"inputs": {name: [rows[0]]}}, 10)  # make the session outside the timing

        def run(seconds: float) -> tuple[float, float, list[tuple[int, int, float]]]:
            per_thread: list[tuple[int, int, float]] = [(0, 0, 0.0)] * ML_CLIENTS
            failures: list[str] = []
            deadline = time.monotonic() + seconds

            def client(i: int) -> None:
                n = batch_rows = 0
                session_ms = 0.0
                request = {"inputs": {name: [rows[i % len(rows)]]}}
                try:
                    while time.monotonic() < deadline:
                        out = adapter.predict(path, request, 10)
                        n += 1
                        batch_rows += out.output["batch_size"]
                        session_ms += out.usage.compute_ms
                except Exception as exc:
                    failures.append(repr(exc))
                per_thread[i] = (n, batch_rows, session_ms)

            threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(ML_CLIENTS)]
            cpu0, t0 = time.process_time(), time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join(seconds + 30)
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            if any(t.is_alive() for t in threads) or failures:
                raise BenchError(f"in-process predict on {model_file}: {failures[:3] or 'threads did not stop'}")
            return elapsed, cpu, per_thread

        run(warm_s)
        elapsed, cpu, per_thread = run(measure_s)
    finally:
        adapter.close()
    n = sum(p[0] for p in per_thread)
    return {
        "model": model_file,
        "max_batch_size": max_batch_size,
        "predictions": n,
        "seconds": elapsed,
        "predictions_per_s": n / elapsed,
        # CPU of this whole process (all threads, ONNX Runtime's included) per prediction.
        "cpu_us_per_prediction": 1e6 * cpu / max(1, n),
        # Wall time inside session.run per prediction; unbatched runs overlap, so this exceeds elapsed / n.
        "session_wall_us_per_prediction": 1000 * sum(p[2] for p in per_thread) / max(1, n),
        "batch_size_mean": sum(p[1] for p in per_thread) / max(1, n),
    }


def run(opts: Options) -> Result:
    """Every side on a fresh stack per round, then the in-process figures."""
    sz = opts.sizes("ml_batching", FULL, QUICK)
    tmp, profile, rounds = opts.tmp, opts.profile, sz.rounds
    warm_s, measure_s, layer_warm_s, layer_s = sz.warm_s, sz.measure_s, sz.layer_warm_s, sz.layer_s
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in ML_SIDES}
    # Alternate, baseline first, each run on a fresh stack: no side always runs on the warmer machine.
    for rnd in range(rounds):
        for side in ML_SIDES:
            runs[side].append(_ml_stack_run(tmp, side, rnd, warm_s, measure_s, profile))

    layer_runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        m: {"baseline": [], "batching": []} for m in ML_LAYER_MODELS
    }
    for rnd in range(rounds):
        for model_file in ML_LAYER_MODELS:
            for side in ("baseline", "batching"):
                size = ML_SIDES[side]["max_batch_size"]
                layer_runs[model_file][side].append(_inference_layer(model_file, size, layer_warm_s, layer_s))
            b, o = layer_runs[model_file]["baseline"][-1], layer_runs[model_file]["batching"][-1]
            log(
                f"  ml_batching in-process round {rnd + 1} {model_file:17}: batching {o['predictions_per_s']:6.0f}"
                f" pred/s (batch mean {o['batch_size_mean']:.1f}, CPU {o['cpu_us_per_prediction']:.0f} us/pred)"
                f" vs off {b['predictions_per_s']:6.0f} pred/s (CPU {b['cpu_us_per_prediction']:.0f} us/pred)"
                f" = {o['predictions_per_s'] / b['predictions_per_s']:.2f}x"
            )

    def avg(items: list[dict[str, Any]], key: str) -> float:
        return statistics.mean(float(r[key] or 0) for r in items)

    layer: dict[str, dict[str, Any]] = {}
    for model_file, sides in layer_runs.items():
        layer[model_file] = {
            side: {
                k: avg(items, k)
                for k in (
                    "predictions_per_s",
                    "cpu_us_per_prediction",
                    "session_wall_us_per_prediction",
                    "batch_size_mean",
                )  # fmt: skip
            }
            for side, items in sides.items()
        }
        layer[model_file]["ratio"] = (
            layer[model_file]["batching"]["predictions_per_s"] / layer[model_file]["baseline"]["predictions_per_s"]
        )

    summary: dict[str, dict[str, Any]] = {}
    for side, items in runs.items():
        summary[side] = {
            k: avg(items, k)
            for k in (
                "predictions_per_s",
                "batch_size_mean",
                "worker_cpu_ms_per_prediction",
                "api_cpu_ms_per_prediction",
                "session_wall_ms_per_prediction",
                "provider_call_ms_mean",
                "queue_wait_ms_mean",
                "execution_ms_mean",
                "worker_cpu_cores",
                "api_cpu_cores",
                "other_cpu_cores",
                "machine_busy_pct",
            )
        }
        summary[side].update(
            latency_p50_ms=statistics.mean(r["load"]["latency_p50_ms"] or 0 for r in items),
            latency_p99_ms=statistics.mean(r["load"]["latency_p99_ms"] or 0 for r in items),
            non_2xx=sum(r["load"]["non_2xx"] for r in items),
            socket_errors=sum(r["load"]["errors"] for r in items),
            batch_size_max=max(r["batch_size_max"] or 0 for r in items),
            batch_size_histogram={
                b: sum(r["batch_size_histogram"].get(b, 0) for r in items)
                for b in sorted({b for r in items for b in r["batch_size_histogram"]})
            },
            provider_options=ML_SIDES[side],
        )
    ours, base = summary["batching"]["predictions_per_s"], summary["baseline"]["predictions_per_s"]
    return {
        "ours": ours,
        "baseline": base,
        "unit": "pred/s",
        "ratio": ours / base,
        "target": 3.0,
        "target_kind": ">=",
        "model": ML_MODEL,
        "clients": ML_CLIENTS,
        "rows_per_request": 1,
        "warmup_s": warm_s,
        "measure_s": measure_s,
        "summary": summary,
        "unbatched_1t_ratio": summary["unbatched_1t"]["predictions_per_s"] / base,
        "batching_vs_unbatched_1t": ours / summary["unbatched_1t"]["predictions_per_s"],
        "rounds": runs,
        "inference_layer": {
            "threads": ML_CLIENTS,
            "warmup_s": layer_warm_s,
            "measure_s": layer_s,
            "models": layer,
            "rounds": layer_runs,
        },
    }


def rows(name: str, res: Result) -> list[Row]:
    """The headline, then supporting rows without a target: unbatched without intra-op spinning, and no stack."""
    out = [standard_row(name, res)]
    base = f"{res['baseline']:.0f} {res['unit']}"
    one = res["summary"]["unbatched_1t"]["predictions_per_s"]
    out.append(("  stack, unbatched, 1 intra-op thread", f"{one:.0f} pred/s", base,
                f"{res['unbatched_1t_ratio']:.2f}x", "-", "supporting, no target"))  # fmt: skip
    for model, layer in res["inference_layer"]["models"].items():
        out.append((f"  in-process {model}", f"{layer['batching']['predictions_per_s']:.0f} pred/s",
                    f"{layer['baseline']['predictions_per_s']:.0f} pred/s", f"{layer['ratio']:.2f}x",
                    "-", "supporting, no target"))  # fmt: skip
    return out


def details(ml: Result) -> None:
    """Latency, batch sizes and CPU per side; the in-process figures per model."""
    print(
        f"ml_batching: {ml['clients']} clients, POST /v1/predict/{ml['model']} with 1 row, "
        f"{ml['measure_s']:.0f} s x {len(ml['rounds']['batching'])} round(s) per side, fresh stack each"
    )
    for side, sm in ml["summary"].items():
        options = ", ".join(f"{k} {v}" for k, v in sm["provider_options"].items() if k != "max_batch_wait_ms")
        print(
            f"  {side:12} ({options}): p50 {sm['latency_p50_ms']:.0f} ms, p99 {sm['latency_p99_ms']:.0f} ms, "
            f"non-2xx {sm['non_2xx']}, socket errors {sm['socket_errors']}; batch_size mean "
            f"{sm['batch_size_mean']:.2f}, max {sm['batch_size_max']}"
        )
        print(
            f"    per prediction: worker CPU {sm['worker_cpu_ms_per_prediction']:.2f} ms, API CPU "
            f"{sm['api_cpu_ms_per_prediction']:.2f} ms, session wall {sm['session_wall_ms_per_prediction']:.3f} ms,"
            f" adapter call {sm['provider_call_ms_mean']:.2f} ms, "
            f"created->started {sm['queue_wait_ms_mean']:.0f} ms"
        )
        print(
            f"    cores: worker {sm['worker_cpu_cores']:.2f}, API {sm['api_cpu_cores']:.2f}, rest "
            f"{sm['other_cpu_cores']:.2f} (machine {sm['machine_busy_pct']:.0f}% busy)"
        )
    for model, layer in ml["inference_layer"]["models"].items():
        b, o = layer["baseline"], layer["batching"]
        print(
            f"  in-process {model}: CPU {o['cpu_us_per_prediction']:.0f} us/pred batched (mean batch "
            f"{o['batch_size_mean']:.1f}) vs {b['cpu_us_per_prediction']:.0f} us/pred unbatched; session wall "
            f"{o['session_wall_us_per_prediction']:.1f} vs {b['session_wall_us_per_prediction']:.0f} us/pred"
        )


BENCHMARK = Benchmark(
    name="ml_batching",
    summary="POST /v1/predict pred/s, 64 clients, micro-batching on vs off (>= 3x)",
    run=run,
    rows=rows,
    details=details,
)
