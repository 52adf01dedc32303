"""ml_images: images/s through POST /v1/predict/shape-classifier (a raw image/png body, one image a request) at
32 clients, one ML worker with onnx micro-batching (max_batch_size 32, 2 ms) vs the same worker with
max_batch_size 1, in the same run (no target: report it).

Supporting, in-process: what the API spends per image before the task exists — Pillow's decode, the
preprocessing (colour mode, resize, scale, mean/std, layout), and turning the tensor into the task's JSON
lists — for the shipped 28x28 PNG and for a 640x480 JPEG photo-sized upload resized to 28x28.
"""

from __future__ import annotations

import base64
import io
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from bench.harness import BenchError, Env, cpu_seconds, log, run_raw, sql_one, wait_http, wait_until
from bench.registry import Benchmark, Options, Result, Row
from bench.stack import wait_worker
from switchyard.defaults import MODELS_DIR
from tests.processes import cli, free_port

REDIS_DB = 10
MODEL = "shape-classifier"
CLIENTS = 32
SIDES: dict[str, dict[str, int]] = {
    "unbatched": {"max_batch_size": 1, "max_batch_wait_ms": 2},
    "batching": {"max_batch_size": 32, "max_batch_wait_ms": 2},
}
CONFIG = """
providers:
  onnx: {{kind: onnx, {provider_options}}}
models:
  shape-classifier:
    type: predict
    labels: [circle, square, triangle]
    top_k: 3
    image: {{input: image, size: [28, 28], mode: L, scale: 0.00392156862745098, mean: [0.5], std: [0.5]}}
    deployments:
      - {{provider: onnx, model: "{model_path}", price: {{per_1k_predictions: 0.02}}}}
"""


@dataclass(frozen=True)
class Sizes:
    warm_s: float
    measure_s: float
    rounds: int
    layer_n: int


FULL = Sizes(warm_s=3.0, measure_s=10.0, rounds=2, layer_n=2000)
QUICK = Sizes(warm_s=2.0, measure_s=5.0, rounds=1, layer_n=300)


def _png() -> bytes:
    ref = json.loads((MODELS_DIR / "shape_classifier.reference.json").read_text())
    return base64.b64decode(ref["images_png_base64"][0])


def _stack_run(tmp: Path, side: str, rnd: int, sz: Sizes) -> dict[str, Any]:
    """One fresh stack (database, Redis DB, API, one ML worker) with `side`'s provider options."""
    options = SIDES[side]
    env = Env(f"mlimg_{side}", REDIS_DB, tmp / f"mlimg-{side}-{rnd}")
    try:
        env.run_cli("migrate")
        config = env.tmp / "switchyard.yaml"
        provider_options = ", ".join(f"{k}: {v}" for k, v in options.items())
        config.write_text(
            CONFIG.format(provider_options=provider_options, model_path=MODELS_DIR / "shape_classifier.onnx")
        )
        env.env["SWITCHYARD_CONFIG"] = str(config)
        url = f"http://127.0.0.1:{free_port()}"
        api = env.start("api", cli("api", "--port", url.rsplit(":", 1)[1]))
        wait_http(f"{url}/healthz", api)
        key = env.run_cli("keys", "create", "--tenant", "bench", "--role", "admin").strip().splitlines()[-1]
        worker = env.start(
            "worker-ml", cli("worker", "--queues", "ml", "--concurrency", str(CLIENTS), "--loglevel", "INFO")
        )
        wait_worker(worker)
        import httpx

        body = _png()
        endpoint = f"{url}/v1/predict/{MODEL}"
        first = httpx.post(
            endpoint, content=body, headers={"Authorization": f"Bearer {key}", "Content-Type": "image/png"}, timeout=60
        )
        if first.status_code != 200 or not first.json().get("top_k"):
            raise BenchError(f"POST {endpoint} answered {first.status_code}: {first.text[:500]}")

        def drain() -> None:
            live = "SELECT count(*) FROM tasks WHERE status IN ('queued', 'running')"
            try:
                wait_until(lambda: sql_one(env.database_url, live) == 0, timeout=30, interval=0.1, what="drain")
            except BenchError:
                log("  warning: predict tasks still queued or running 30 s after the load stopped")
            time.sleep(0.5)

        def go(seconds: float) -> Any:
            return run_raw(
                endpoint, auth=key, connections=CLIENTS, seconds=seconds, body=body, content_type="image/png"
            )

        go(sz.warm_s)
        drain()
        t0 = sql_one(env.database_url, "SELECT now()")
        cpu0 = {"worker": cpu_seconds(worker.pid), "api": cpu_seconds(api.pid)}
        res = go(sz.measure_s)
        cpu = {"worker": cpu_seconds(worker.pid) - cpu0["worker"], "api": cpu_seconds(api.pid) - cpu0["api"]}
        t1 = sql_one(env.database_url, "SELECT now()")
        drain()
        ok = res.requests - res.non_2xx
        with psycopg.connect(env.database_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT avg((result->>'batch_size')::float), max((result->>'batch_size')::int),"
                " avg(octet_length(input::text)) FROM tasks"
                " WHERE created_at >= %s AND created_at < %s AND status = 'succeeded'",
                (t0, t1),
            ).fetchone()
        assert row is not None
        result = {
            "side": side,
            "round": rnd,
            "provider_options": options,
            "load": asdict(res),
            "images_per_s": ok / res.seconds,
            "api_cpu_ms_per_image": 1000 * cpu["api"] / max(1, ok),
            "worker_cpu_ms_per_image": 1000 * cpu["worker"] / max(1, ok),
            "batch_size_mean": float(row[0] or 0),
            "batch_size_max": row[1],
            "task_input_bytes": float(row[2] or 0),
        }
        log(
            f"  ml_images round {rnd + 1} {side:9}: {result['images_per_s']:5.0f} images/s  "
            f"p50 {res.latency_p50_ms or 0:.0f} ms  p99 {res.latency_p99_ms or 0:.0f} ms  non-2xx {res.non_2xx}  "
            f"batch mean {result['batch_size_mean']:.2f} (max {result['batch_size_max']})  API CPU "
            f"{result['api_cpu_ms_per_image']:.2f} ms/img, worker CPU {result['worker_cpu_ms_per_image']:.2f} ms/img"
        )
        if options["max_batch_size"] == 1 and (row[1] or 0) > 1:
            raise BenchError(f"the max_batch_size 1 worker reported batches of {row[1]}")
        return result
    finally:
        env.close()


def _per_image_cost(n: int) -> dict[str, dict[str, float]]:
    """Microseconds per image of each step the API takes, in this process."""
    from PIL import Image

    from switchyard.core.config import ImagePreprocessing
    from switchyard.ml.images import decode, preprocess

    spec = ImagePreprocessing(input="image", size=(28, 28), mode="L", scale=1 / 255, mean=[0.5], std=[0.5])
    rng = np.random.default_rng(0)
    photo = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), "RGB").save(photo, format="JPEG", quality=90)
    inputs = {"png_28x28_grey": _png(), "jpeg_640x480_rgb": photo.getvalue()}
    out: dict[str, dict[str, float]] = {}
    for name, blob in inputs.items():
        decode_s = prep_s = list_s = 0.0
        for _ in range(n):
            t0 = time.perf_counter()
            image = decode(blob, max_pixels=16_000_000, param="file")
            t1 = time.perf_counter()
            tensor = preprocess(image, spec)
            t2 = time.perf_counter()
            tensor[None].tolist()
            t3 = time.perf_counter()
            decode_s, prep_s, list_s = decode_s + t1 - t0, prep_s + t2 - t1, list_s + t3 - t2
        out[name] = {
            "bytes": len(blob),
            "decode_us": 1e6 * decode_s / n,
            "preprocess_us": 1e6 * prep_s / n,
            "to_lists_us": 1e6 * list_s / n,
        }
        log(
            f"  ml_images in-process {name}: decode {out[name]['decode_us']:.0f} us, preprocess "
            f"{out[name]['preprocess_us']:.0f} us, tensor to JSON lists {out[name]['to_lists_us']:.0f} us per image"
        )
    return out


def run(opts: Options) -> Result:
    """Both sides on a fresh stack per round (alternating, unbatched first), then the in-process costs."""
    sz = opts.sizes("ml_images", FULL, QUICK)
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for rnd in range(sz.rounds):
        for side in SIDES:
            runs[side].append(_stack_run(opts.tmp, side, rnd, sz))
    summary = {
        side: {
            k: statistics.mean(float(r[k] or 0) for r in items)
            for k in (
                "images_per_s",
                "api_cpu_ms_per_image",
                "worker_cpu_ms_per_image",
                "batch_size_mean",
                "task_input_bytes",
            )
        }
        | {
            "latency_p50_ms": statistics.mean(r["load"]["latency_p50_ms"] or 0 for r in items),
            "latency_p99_ms": statistics.mean(r["load"]["latency_p99_ms"] or 0 for r in items),
            "non_2xx": sum(r["load"]["non_2xx"] for r in items),
        }
        for side, items in runs.items()
    }
    ours, base = summary["batching"]["images_per_s"], summary["unbatched"]["images_per_s"]
    return {
        "ours": ours,
        "baseline": base,
        "unit": "images/s",
        "ratio": ours / base,
        "target": None,
        "target_kind": ">=",
        "model": MODEL,
        "clients": CLIENTS,
        "load_tool": "asyncio (binary bodies)",
        "measure_s": sz.measure_s,
        "summary": summary,
        "rounds": runs,
        "per_image_cost": _per_image_cost(sz.layer_n),
    }


def rows(name: str, res: Result) -> list[Row]:
    """The headline (no target), then the per-image cost of decoding and preprocessing."""
    out: list[Row] = [
        (
            name,
            f"{res['ours']:.0f} {res['unit']}",
            f"{res['baseline']:.0f} {res['unit']} (unbatched)",
            f"{res['ratio']:.2f}x",
            "-",
            "no target: report it",
        )
    ]
    for image, cost in res["per_image_cost"].items():
        total = cost["decode_us"] + cost["preprocess_us"] + cost["to_lists_us"]
        out.append((f"  per image, {image}", f"{total:.0f} us", "-", "-", "-", "supporting, no target"))
    return out


def details(res: Result) -> None:
    """Latency, batch sizes and CPU per side; the cost of each step per image."""
    print(f"ml_images: {res['clients']} clients, POST /v1/predict/{res['model']} with one 28x28 PNG (image/png)")
    for side, sm in res["summary"].items():
        print(
            f"  {side:9}: {sm['images_per_s']:.0f} images/s, p50 {sm['latency_p50_ms']:.0f} ms, p99 "
            f"{sm['latency_p99_ms']:.0f} ms, non-2xx {sm['non_2xx']}; batch mean {sm['batch_size_mean']:.2f}; "
            f"CPU per image: API {sm['api_cpu_ms_per_image']:.2f} ms, worker {sm['worker_cpu_ms_per_image']:.2f} ms;"
            f" task input {sm['task_input_bytes']:.0f} B"
        )
    for image, cost in res["per_image_cost"].items():
        print(
            f"  {image} ({cost['bytes']} B): decode {cost['decode_us']:.0f} us, preprocess "
            f"{cost['preprocess_us']:.0f} us, to JSON lists {cost['to_lists_us']:.0f} us"
        )


BENCHMARK = Benchmark(
    name="ml_images",
    summary="POST /v1/predict images/s (raw PNG), 32 clients, micro-batching on vs off; decode/preprocess cost",
    run=run,
    rows=rows,
    details=details,
)
