"""dag: workflow runs, fake at 0 ms, one provider worker (threads, 64) and one control worker (threads, 16):
per-step overhead of a 10-step chain and of a 100-wide for_each plus its fan-in, submit to last step done, vs
a plain Celery chain / chord of no-op tasks (threads, 64; Redis result backend for the chord) (target <= 1.5x,
lower is better).
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from functools import partial
from typing import Any

import psycopg
import redis

from bench.harness import REDIS_BASE, BenchError, Env, cpu_seconds, log
from bench.registry import Benchmark, Options, Result, Row, verdict
from bench.stack import POOL, Switchyard, start_celery_worker, wait_worker
from tests.processes import cli


@dataclass(frozen=True)
class Sizes:
    rounds: int
    warmup_rounds: int


FULL = Sizes(rounds=10, warmup_rounds=2)
QUICK = Sizes(rounds=3, warmup_rounds=1)

# Redis DBs of this benchmark: ours and the baseline's (broker and chord results). 11-15 are the others'.
DAG_REDIS_DB = 8
DAG_BASELINE_REDIS_DB = 6
DAG_CHAIN_STEPS = 10
DAG_FAN_WIDTH = 100
DAG_POLL_S = 0.02
DAG_PROVIDER_CONCURRENCY = 64
DAG_CONTROL_CONCURRENCY = 16
DAG_RUN_TIMEOUT_S = 120.0
# name -> (workflow name, steps per run); the fan-out counts its 100 items and the fan-in step.
DAG_SHAPES = {"chain": ("bench_chain", DAG_CHAIN_STEPS), "fanout": ("bench_fanout", DAG_FAN_WIDTH + 1)}
_CELERY_SUCCEEDED = re.compile(r"Task ([\w.]+)\[[^\]]+\] succeeded in ([\d.e-]+)s")


def _chat_step(step_id: str, content: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": step_id,
        "type": "chat",
        "model": "chat-default",
        "input": {"messages": [{"role": "user", "content": content}]},
        **extra,
    }


def _dag_definitions() -> dict[str, dict[str, Any]]:
    """The chain (each step renders the previous step's output) and the fan-out (for_each, no max_parallel, then
    a fan-in step over all the items' outputs)."""
    chain = [_chat_step("s0", "{{ input.text }}")]
    for i in range(1, DAG_CHAIN_STEPS):
        chain.append(_chat_step(f"s{i}", f"{{{{ steps.s{i - 1}.output.content }}}}", depends_on=[f"s{i - 1}"]))
    fanout = [
        _chat_step("fan", "item {{ item }}", for_each="{{ input.numbers }}"),
        _chat_step("join", "{{ steps.fan.output | length }} items", depends_on=["fan"]),
    ]
    return {
        "chain": {"name": DAG_SHAPES["chain"][0], "steps": chain},
        "fanout": {"name": DAG_SHAPES["fanout"][0], "steps": fanout},
    }


DAG_INPUTS: dict[str, dict[str, Any]] = {
    "chain": {"text": "hello bench"},
    # Not `items`/`values`/`keys`: Jinja would resolve those to the dict's methods.
    "fanout": {"numbers": list(range(DAG_FAN_WIDTH))},
}


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _dag_ours_once(client: Any, url: str, shape: str) -> dict[str, Any]:
    """POST a run, poll GET /v1/runs/{id} every 20 ms until it reads `succeeded`. Times in seconds since the
    POST was sent: to the run's own finished_at, and to the poll that saw it; plus the run's own created→finished."""
    name, steps = DAG_SHAPES[shape]
    t0 = time.time()
    resp = client.post(f"{url}/v1/workflows/{name}/runs", json={"input": DAG_INPUTS[shape]})
    t_post = time.time()
    if resp.status_code != 202:
        raise BenchError(f"POST /v1/workflows/{name}/runs answered {resp.status_code}: {resp.text[:500]}")
    run_id = resp.json()["id"]
    polls = 0
    while True:
        time.sleep(DAG_POLL_S)
        got = client.get(f"{url}/v1/runs/{run_id}")
        polls += 1
        if got.status_code != 200:
            raise BenchError(f"GET /v1/runs/{run_id} answered {got.status_code}: {got.text[:500]}")
        view = got.json()
        if view["status"] == "succeeded":
            t_seen = time.time()
            break
        if view["status"] in ("failed", "canceled"):
            raise BenchError(f"run {run_id} ({name}) {view['status']}: {view.get('error')}")
        if time.time() - t0 > DAG_RUN_TIMEOUT_S:
            raise BenchError(f"run {run_id} ({name}) still {view['status']} after {DAG_RUN_TIMEOUT_S:.0f}s")
    bad = {k: v["status"] for k, v in view["steps"].items() if v["status"] != "succeeded"}
    if bad or len(view["steps"]) != (steps if shape == "chain" else 2):
        raise BenchError(f"run {run_id} succeeded with steps {bad or list(view['steps'])}")
    if shape == "fanout" and len(view["steps"]["fan"]["output"]) != DAG_FAN_WIDTH:
        raise BenchError(f"run {run_id}: the fan-out step has {len(view['steps']['fan']['output'])} outputs")
    finished, created = _ts(view["finished_at"]), _ts(view["created_at"])
    return {
        "run_id": run_id,
        "submit_to_done_s": finished - t0,
        "polled_s": t_seen - t0,
        "run_created_to_finished_s": finished - created,
        "submit_s": t_post - t0,
        "polls": polls,
    }


def _dag_baseline_once(publisher: Any, client: redis.Redis, shape: str, token: str) -> dict[str, Any]:
    """apply_async a chain of 10 no-ops, or a chord of 100 no-ops and a join; poll the key the last task RPUSHes
    its time.time() to every 20 ms. Times in seconds since apply_async was called."""
    from celery import chain, chord

    from bench.baselines import DAG_DONE_KEY, DAG_ITEM_TASK, DAG_JOIN_TASK, DAG_STEP_TASK

    key = DAG_DONE_KEY.format(token=token)
    if shape == "chain":
        last = DAG_CHAIN_STEPS - 1
        sigs = [publisher.signature(DAG_STEP_TASK, args=(token, i, last), immutable=True) for i in range(last + 1)]
        canvas = chain(*sigs)
    else:
        header = [publisher.signature(DAG_ITEM_TASK, args=(i,)) for i in range(DAG_FAN_WIDTH)]
        canvas = chord(header, publisher.signature(DAG_JOIN_TASK, args=(token,)), app=publisher)
    t0 = time.time()
    result = canvas.apply_async()
    t_post = time.time()
    while True:
        time.sleep(DAG_POLL_S)
        if client.llen(key):
            t_seen = time.time()
            break
        if time.time() - t0 > DAG_RUN_TIMEOUT_S:
            raise BenchError(f"the baseline {shape} {token} did not finish in {DAG_RUN_TIMEOUT_S:.0f}s")
    record = client.lrange(key, 0, -1)
    # The client's result backend keeps every published result until it is read or forgotten (and unsubscribes
    # from its channel when it goes): forget them now, outside the timing, and not at interpreter exit.
    node: Any = result
    while node is not None:
        node.forget()
        node = node.parent
    if shape == "fanout" and int(record[1]) != DAG_FAN_WIDTH:
        raise BenchError(f"the baseline chord's join got {int(record[1])} results")
    return {"submit_to_done_s": float(record[0]) - t0, "polled_s": t_seen - t0, "submit_s": t_post - t0}


def _celery_durations(text: str) -> dict[str, list[float]]:
    """Task name -> the `succeeded in` seconds Celery logged for it (INFO)."""
    out: dict[str, list[float]] = {}
    for name, secs in _CELERY_SUCCEEDED.findall(text):
        out.setdefault(name, []).append(float(secs))
    return out


def _dag_breakdown(database_url: str, shape: str, run_ids: list[str]) -> dict[str, float]:
    """Where a run's time went, in ms (means over the runs), from the rows' own timestamps (all set by Python's
    clock in the API and the workers, so one clock)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        runs = {
            r[0]: (r[1].timestamp(), r[2].timestamp())
            for r in conn.execute("SELECT id, created_at, finished_at FROM runs WHERE id = ANY(%s)", (run_ids,))
        }
        rows = conn.execute(
            "SELECT t.run_id, t.step_id, t.created_at, t.started_at, t.finished_at, a.latency_ms FROM tasks t"
            " LEFT JOIN attempts a ON a.task_id = t.id WHERE t.run_id = ANY(%s) ORDER BY t.created_at",
            (run_ids,),
        ).fetchall()
    tasks: dict[str, list[tuple[str, float, float, float, float]]] = {}
    for run_id, step_id, created, started, finished, latency in rows:
        tasks.setdefault(run_id, []).append(
            (step_id, created.timestamp(), started.timestamp(), finished.timestamp(), float(latency or 0) / 1000)
        )
    parts: dict[str, list[float]] = {}

    def add(key: str, seconds: float) -> None:
        parts.setdefault(key, []).append(seconds * 1000)

    for run_id, (run_created, run_finished) in runs.items():
        mine = tasks[run_id]
        add("run_created_to_first_task_created", mine[0][1] - run_created)
        if shape == "chain":
            for i, (_, created, started, finished, latency) in enumerate(mine):
                add("task_created_to_claimed", started - created)
                add("task_claimed_to_finished", finished - started)
                add("provider_call", latency)
                if i + 1 < len(mine):
                    add("task_finished_to_next_task_created", mine[i + 1][1] - finished)
            add("last_task_finished_to_run_finished", run_finished - mine[-1][3])
        else:
            fan = [t for t in mine if t[0] == "fan"]
            join = next(t for t in mine if t[0] == "join")
            add("fan_tasks_created_spread", max(t[1] for t in fan) - min(t[1] for t in fan))
            add("first_fan_task_created_to_last_claimed", max(t[2] for t in fan) - min(t[1] for t in fan))
            add("first_fan_task_created_to_last_finished", max(t[3] for t in fan) - min(t[1] for t in fan))
            add("fan_task_claimed_to_finished", statistics.mean(t[3] - t[2] for t in fan))
            add("last_fan_task_finished_to_join_created", join[1] - max(t[3] for t in fan))
            add("join_created_to_finished", join[3] - join[1])
            add("join_finished_to_run_finished", run_finished - join[3])
    return {k: statistics.mean(v) for k, v in parts.items()}


def run(opts: Options) -> Result:
    """Both shapes on both sides, alternating, after warm-up rounds; medians per step."""
    sz = opts.sizes("dag", FULL, QUICK)
    rounds, warm = sz.rounds, sz.warmup_rounds
    import httpx
    from celery import Celery

    from bench.baselines import BASELINE_QUEUE, make_baseline_celery

    env = Env("dag", DAG_REDIS_DB, opts.tmp / "dag")
    base_url = f"{REDIS_BASE}/{DAG_BASELINE_REDIS_DB}"
    base_redis = redis.Redis.from_url(base_url)
    base_redis.flushdb()
    publisher: Celery | None = None
    client: httpx.Client | None = None
    try:
        # Ours: API, fake at 0 ms, one provider worker (threads x64) and one control worker (threads x16).
        ours = Switchyard(env, fake_latency_ms=0)
        provider = ours.start_worker(DAG_PROVIDER_CONCURRENCY)
        control = env.start(
            "worker-control",
            cli("worker", "--queues", "control", "--pool", POOL, "--concurrency", str(DAG_CONTROL_CONCURRENCY),
                "--loglevel", "INFO"),
        )  # fmt: skip
        # Baseline: plain Celery, same pool and concurrency as our provider worker, broker and results in its DB.
        bworker = start_celery_worker(
            env, "baseline-worker", "bench.baselines:dag_celery_app", BASELINE_QUEUE, DAG_PROVIDER_CONCURRENCY,
            {"BENCH_REDIS_URL": base_url},
        )  # fmt: skip
        for proc in (provider, control, bworker):
            wait_worker(proc)
        assert ours.api is not None
        client = httpx.Client(headers={"Authorization": f"Bearer {ours.key}"}, timeout=30)
        for shape, definition in _dag_definitions().items():
            got = client.post(f"{ours.url}/v1/workflows", json=definition)
            if got.status_code != 201:
                raise BenchError(f"registering {shape} answered {got.status_code}: {got.text[:1000]}")
        publisher = make_baseline_celery(base_url, result_backend=base_url)

        ours_procs = {"api": ours.api, "provider_worker": provider, "control_worker": control}
        samples: dict[str, dict[str, list[dict[str, Any]]]] = {s: {"ours": [], "baseline": []} for s in DAG_SHAPES}
        cpu: dict[str, dict[str, dict[str, float]]] = {
            s: {"ours": dict.fromkeys(ours_procs, 0.0), "baseline": {"worker": 0.0}} for s in DAG_SHAPES
        }
        logs: dict[str, dict[str, dict[str, list[float]]]] = {s: {"ours": {}, "baseline": {}} for s in DAG_SHAPES}

        def measured(shape: str, side: str, once: Callable[[], dict[str, Any]], keep: bool) -> None:
            procs = ours_procs if side == "ours" else {"worker": bworker}
            log_from = {n: len(p.log()) for n, p in procs.items() if n != "api"}
            cpu0 = {n: cpu_seconds(p.pid) for n, p in procs.items()}
            sample = once()
            # The worker logs its last lines (and finishes its acks) just after the run reads done.
            time.sleep(0.2)
            if not keep:
                return
            samples[shape][side].append(sample)
            for n, p in procs.items():
                cpu[shape][side][n] += cpu_seconds(p.pid) - cpu0[n]
            for n, start in log_from.items():
                for task, secs in _celery_durations(procs[n].log()[start:]).items():
                    logs[shape][side].setdefault(task, []).extend(secs)

        # Alternate the sides (and the shapes) so that neither always runs on a warmer or busier machine.
        for rnd in range(warm + rounds):
            keep = rnd >= warm
            for shape in DAG_SHAPES:
                measured(shape, "ours", partial(_dag_ours_once, client, ours.url, shape), keep)
                once = partial(_dag_baseline_once, publisher, base_redis, shape, f"{shape}-{rnd}")
                measured(shape, "baseline", once, keep)
            if keep:
                line = []
                for shape, (_, steps) in DAG_SHAPES.items():
                    last_o, last_b = samples[shape]["ours"][-1], samples[shape]["baseline"][-1]
                    line.append(f"{shape} {1000 * last_o['submit_to_done_s'] / steps:.1f} vs "
                                f"{1000 * last_b['submit_to_done_s'] / steps:.2f} ms/step")  # fmt: skip
                log(f"  dag round {rnd - warm + 1}/{rounds}: " + "; ".join(line))
            else:
                log(f"  dag warm-up round {rnd + 1}/{warm} done")

        shapes: dict[str, dict[str, Any]] = {}
        for shape, (_, steps) in DAG_SHAPES.items():
            per_step: dict[str, dict[str, dict[str, float]]] = {}
            for side in ("ours", "baseline"):
                keys = ["submit_to_done_s", "polled_s", "submit_s"]
                if side == "ours":
                    keys.append("run_created_to_finished_s")
                per_step[side] = {}
                for k in keys:
                    ms = [1000 * x[k] / steps for x in samples[shape][side]]
                    per_step[side][k.removesuffix("_s")] = {
                        "median": statistics.median(ms), "mean": statistics.mean(ms), "min": min(ms), "max": max(ms)
                    }  # fmt: skip
            o = per_step["ours"]["submit_to_done"]["median"]
            b = per_step["baseline"]["submit_to_done"]["median"]
            n_runs = len(samples[shape]["ours"])
            shapes[shape] = {
                "ours": o,
                "baseline": b,
                "unit": "ms/step",
                "ratio": o / b,
                "target": 1.5,
                "target_kind": "<=",
                "steps": steps,
                "runs": n_runs,
                "per_step_ms": per_step,
                "ratio_polled": per_step["ours"]["polled"]["median"] / per_step["baseline"]["polled"]["median"],
                # Supporting: the baseline timed from apply_async's return (the client's publishing left out).
                "ratio_vs_baseline_after_submit": o
                / statistics.median(
                    1000 * (x["submit_to_done_s"] - x["submit_s"]) / steps for x in samples[shape]["baseline"]
                ),
                "cpu_ms_per_step": {
                    side: {n: 1000 * v / (n_runs * steps) for n, v in cpu[shape][side].items()}
                    for side in ("ours", "baseline")
                },
                "celery_task_ms": {
                    side: {
                        task: {"count_per_run": len(v) / n_runs, "mean_ms": 1000 * statistics.mean(v)}
                        for task, v in logs[shape][side].items()
                    }
                    for side in ("ours", "baseline")
                },
                "breakdown_ms": _dag_breakdown(env.database_url, shape, [x["run_id"] for x in samples[shape]["ours"]]),
                "samples": samples[shape],
            }
        chain_res, fan_res = shapes["chain"], shapes["fanout"]
        return {
            **{k: chain_res[k] for k in ("ours", "baseline", "unit", "ratio", "target", "target_kind")},
            "fanout": {k: fan_res[k] for k in ("ours", "baseline", "unit", "ratio", "target", "target_kind")},
            "measure": "median over runs of (last step done - submit) / steps; submit = just before the POST "
            "(ours) or apply_async (baseline); done = the run's finished_at (ours), the last task's time.time() "
            "(baseline)",
            "rounds": rounds,
            "warmup_rounds": warm,
            "sizes": asdict(sz),
            "poll_s": DAG_POLL_S,
            "concurrency": {
                "provider": DAG_PROVIDER_CONCURRENCY,
                "control": DAG_CONTROL_CONCURRENCY,
                "baseline": DAG_PROVIDER_CONCURRENCY,
            },  # fmt: skip
            "pool": POOL,
            "shapes": shapes,
        }
    finally:
        if client is not None:
            client.close()
        if publisher is not None:
            publisher.close()
        try:
            env.close()
        finally:
            base_redis.flushdb()
            base_redis.close()


def rows(name: str, res: Result) -> list[Row]:
    """One line per shape, in ms per step (lower is better)."""
    out: list[Row] = []
    for shape, label in (("chain", f"{name} chain, 10 steps"), ("fanout", f"{name} fan-out, 100 + join")):
        sh = res["shapes"][shape]
        out.append((label, f"{sh['ours']:.1f} ms/step", f"{sh['baseline']:.2f} ms/step",
                    f"{sh['ratio']:.2f}x", f"<={sh['target']:.1f}x", verdict(sh)))  # fmt: skip
    return out


def details(dag: Result) -> None:
    """Per shape: where our time went, CPU per step on each side, our Celery tasks."""
    print(
        f"dag: {dag['rounds']} runs per shape and side (after {dag['warmup_rounds']} warm-up rounds), medians; "
        f"submit -> last step done, per step; polls every {1000 * dag['poll_s']:.0f} ms"
    )
    for shape, sh in dag["shapes"].items():
        o, b = sh["per_step_ms"]["ours"], sh["per_step_ms"]["baseline"]
        cpu_o, cpu_b = sh["cpu_ms_per_step"]["ours"], sh["cpu_ms_per_step"]["baseline"]
        print(
            f"  {shape:6}: ours {o['submit_to_done']['median']:.1f} ms/step (run created->finished "
            f"{o['run_created_to_finished']['median']:.1f}, seen by polling {o['polled']['median']:.1f}, "
            f"POST {o['submit']['median'] * sh['steps']:.0f} ms/run); "
            f"baseline {b['submit_to_done']['median']:.2f} (seen by polling {b['polled']['median']:.2f}, "
            f"apply_async {b['submit']['median']:.2f}); polled ratio {sh['ratio_polled']:.2f}x"
        )
        print(
            f"          CPU per step: ours API {cpu_o['api']:.2f} + provider worker {cpu_o['provider_worker']:.2f}"
            f" + control worker {cpu_o['control_worker']:.2f} ms; baseline worker {cpu_b['worker']:.2f} ms"
        )
        tasks = ", ".join(
            f"{t.split('.')[-1]} x{v['count_per_run']:.0f}/run {v['mean_ms']:.1f} ms"
            for t, v in sh["celery_task_ms"]["ours"].items()
        )
        print(f"          our Celery tasks: {tasks}")
        print("          ours, ms: " + ", ".join(f"{k} {v:.1f}" for k, v in sh["breakdown_ms"].items()))


BENCHMARK = Benchmark(
    name="dag",
    summary="10-step chain and 100-wide fan-out of 0 ms steps vs Celery chain/chord (<= 1.5x)",
    run=run,
    rows=rows,
    details=details,
)
