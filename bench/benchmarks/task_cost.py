"""task_cost: what one chat task costs each process kind, for the capacity plan (an accounting tool: no baseline,
no target).

One `switchyard api`, one `switchyard worker` (provider, control and webhooks queues, threads, 64), the fake
provider at 0 ms, and a redis-server of this benchmark's own (so that only our stack's commands are counted).
After a warm-up, two workloads of N tasks each, 32 keep-alive connections from the asyncio load generator (it
sends exactly N requests, where wrk runs for a duration): (a) `POST /v1/chat/completions`, synchronous;
(b) `POST /v1/tasks`, then a wait until the worker signalled all N finished. Each figure is a delta over the
workload divided by N:

- CPU (utime + stime, plus reaped children) from /proc of each process group: API, worker, redis-server, fake;
  Postgres is every process named `postgres` on the machine, other databases' backends included; the load
  generator is the runner's main thread (`time.thread_time`).
- Postgres: xact_commit, xact_rollback and tup_* of the stack's database (pg_stat_database), WAL bytes
  (pg_current_wal_lsn, cluster-wide), statements from pg_stat_statements when the server preloads it.
- Redis: `INFO commandstats` calls per command (the snapshots' own INFO left out).
- Broker messages: Celery messages published, counted exactly as LPUSHes to the queue lists (kombu's Redis
  transport publishes each message with one LPUSH), seen through keyspace notifications (`notify-keyspace-events
  El` on our server; the same LPUSH events to `switchyard:done:*` tell when tasks finished).

Counters are read after `settle_s` of quiet, since Postgres backends flush their statistics up to a second
late; the background work of an idle stack over the same time (measured once, reported as `idle_per_task`) is
included in the figures, not subtracted.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

from bench.harness import CHAT_BODY, PG_ADMIN_URL, BenchError, Env, log, machine_cpu_ticks, run_raw, sql_one, wait_until
from bench.registry import Benchmark, Options, Result, Row
from bench.stack import CONNECTIONS, CONTROL_QUEUE, PROVIDER_QUEUE, Switchyard, wait_worker
from switchyard.workers.queues import ALL, WEBHOOKS
from tests.processes import Process, free_port

REDIS_DB = 0
QUEUES = f"{PROVIDER_QUEUE},{CONTROL_QUEUE},{WEBHOOKS}"
SYNC_BODY = b'{"model":"chat-default","messages":[{"role":"user","content":"hello bench"}]}'
PG_COUNTERS = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted")
KINDS = ("api", "worker", "postgres", "redis", "fake", "load")
DONE_PREFIX = b"switchyard:done:"
# kombu names a queue's priority lists "<queue>\x06\x16<priority>".
PRIORITY_SEP = b"\x06\x16"


@dataclass(frozen=True)
class Sizes:
    n: int
    warm: int
    idle_s: float
    settle_s: float
    worker_concurrency: int
    max_in_flight: int


FULL = Sizes(n=3000, warm=300, idle_s=5.0, settle_s=2.0, worker_concurrency=64, max_in_flight=1000)
QUICK = Sizes(n=300, warm=60, idle_s=3.0, settle_s=2.0, worker_concurrency=64, max_in_flight=1000)


def start_redis(tmp: Path) -> tuple[Process, str]:
    """A private redis-server (no persistence, list keyspace events on); returns it and its URL (no DB)."""
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(tmp), "--notify-keyspace-events", "El"]  # fmt: skip
    proc = Process("redis-server", argv, dict(os.environ), tmp)
    url = f"redis://127.0.0.1:{port}"
    client = redis.Redis.from_url(url)

    def up() -> bool:
        if not proc.alive():
            raise BenchError(f"redis-server exited:\n{proc.log()[-2000:]}")
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    wait_until(up, timeout=20, what="redis-server")
    client.close()
    return proc, url


def group_cpu() -> tuple[dict[int, float], float]:
    """CPU seconds per process group and of all processes named `postgres`. Reaped children's time (cutime,
    cstime) is included, so that a backend or thread that exits during the window is still counted."""
    tick = os.sysconf("SC_CLK_TCK")
    groups: dict[int, float] = defaultdict(float)
    postgres = 0.0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                text = f.read()
        except OSError:  # it exited since the listing
            continue
        comm, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()
        secs = sum(int(x) for x in rest[11:15]) / tick
        groups[int(rest[2])] += secs
        if comm == "postgres":
            postgres += secs
    return groups, postgres


def key_family(key: bytes) -> str:
    """What an LPUSHed key is: a broker queue, a task's done signal, or another key with its ids starred."""
    queue = key.split(PRIORITY_SEP)[0].decode(errors="replace")
    if queue in ALL:
        return f"broker:{queue}"
    if key.startswith(DONE_PREFIX):
        return "done-signal"
    # Ids only (hex runs, UUIDs): a model name like gpt-4o-mini stays readable.
    return re.sub(r"[0-9a-f]{8,}(-[0-9a-f]{4,})*", "*", key.decode(errors="replace"))


@dataclass
class Snapshot:
    at: float
    cpu: dict[str, float]
    pg: dict[str, int]
    other_db_xacts: int
    lsn: str
    redis_calls: dict[str, int]
    redis_usec: dict[str, int]
    pushes: Counter[str]
    machine: tuple[int, int]
    statements: dict[str, int] = field(default_factory=dict)


class Meter:
    """Reads every counter of the stack at once, and counts LPUSHes by key from Redis keyspace events."""

    def __init__(self, env: Env, stack: Switchyard, worker: Process, redis_proc: Process) -> None:
        assert stack.api is not None
        assert stack.fake is not None
        self.env, self.stack = env, stack
        self.groups = {"api": stack.api.pid, "worker": worker.pid, "redis": redis_proc.pid, "fake": stack.fake.pid}
        self.pushes: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._pubsub = env.redis.pubsub()  # type: ignore[no-untyped-call]
        self._pubsub.subscribe(**{f"__keyevent@{REDIS_DB}__:lpush": self._on_push})
        self._thread = self._pubsub.run_in_thread(sleep_time=0.01, daemon=True)
        self.pgss_error: str | None = None
        try:
            with psycopg.connect(env.database_url, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        except psycopg.Error as exc:
            self.pgss_error = str(exc).strip().splitlines()[0]
        self.statements()

    def _on_push(self, message: dict[str, Any]) -> None:
        with self._lock:
            self.pushes[key_family(message["data"])] += 1

    def close(self) -> None:
        """Stop listening to keyspace events."""
        self._thread.stop()
        self._thread.join(5)
        self._pubsub.close()

    def statements(self) -> dict[str, int]:
        """Calls per statement text in our database, or {} (and `pgss_error`) without pg_stat_statements. Its
        own query is a transaction in our database: callers run it outside the measured window."""
        if self.pgss_error:
            return {}
        query = (
            "SELECT query, sum(calls) FROM pg_stat_statements JOIN pg_database d ON d.oid = dbid "
            "WHERE d.datname = current_database() AND query NOT LIKE '%pg_stat_statements%' GROUP BY 1"
        )
        try:
            with psycopg.connect(self.env.database_url, autocommit=True) as conn:
                return {q: int(c) for q, c in conn.execute(query).fetchall()}
        except psycopg.Error as exc:  # typically: not in shared_preload_libraries
            self.pgss_error = str(exc).strip().splitlines()[0]
            return {}

    def read(self) -> Snapshot:
        """Every counter now. Its Postgres connection costs one backend start (a few ms, once per snapshot)."""
        cols = ", ".join(PG_COUNTERS)
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            mine = conn.execute(f"SELECT {cols} FROM pg_stat_database WHERE datname = %s", (self.env.db_name,))
            pg = dict(zip(PG_COUNTERS, (int(x) for x in mine.fetchone() or ()), strict=True))
            cluster = conn.execute("SELECT sum(xact_commit), pg_current_wal_lsn()::text FROM pg_stat_database")
            total, lsn = cluster.fetchone() or (0, "0/0")
        stats = self.env.redis.info("commandstats")
        # Our own INFO calls are the only commands of the snapshots themselves.
        calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info"}
        usec = {k.removeprefix("cmdstat_"): int(v["usec"]) for k, v in stats.items() if k != "cmdstat_info"}
        with self._lock:
            pushes = Counter(self.pushes)
        groups, postgres = group_cpu()
        cpu = {kind: groups.get(pid, 0.0) for kind, pid in self.groups.items()} | {"postgres": postgres}
        return Snapshot(time.perf_counter(), cpu, pg, int(total) - pg["xact_commit"], lsn, calls, usec, pushes,
                        machine_cpu_ticks())  # fmt: skip


def deltas(a: Snapshot, b: Snapshot, n: float) -> dict[str, Any]:
    """Everything that changed from `a` to `b`, divided by `n` (tasks, or seconds for the idle rate)."""
    wal = float(sql_one(PG_ADMIN_URL, "SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", b.lsn, a.lsn))
    redis_calls = {k: (v - a.redis_calls.get(k, 0)) / n for k, v in b.redis_calls.items()}
    redis_calls = dict(sorted(((k, v) for k, v in redis_calls.items() if v), key=lambda kv: -kv[1]))
    pushes = {k: (v - a.pushes.get(k, 0)) / n for k, v in sorted(b.pushes.items()) if v - a.pushes.get(k, 0)}
    busy = b.machine[0] - a.machine[0]
    stmts = {q: (c - a.statements.get(q, 0)) / n for q, c in b.statements.items() if c - a.statements.get(q, 0)}
    return {
        "cpu_ms": {k: 1000 * (b.cpu[k] - a.cpu[k]) / n for k in a.cpu},
        "postgres": {k: (b.pg[k] - a.pg[k]) / n for k in PG_COUNTERS} | {"wal_bytes": wal / n},
        "other_databases_xact_commit": (b.other_db_xacts - a.other_db_xacts) / n,
        "redis_commands": sum(redis_calls.values()),
        "redis_by_command": redis_calls,
        "redis_usec": sum(v - a.redis_usec.get(k, 0) for k, v in b.redis_usec.items()) / n,
        "broker_messages": sum(v for k, v in pushes.items() if k.startswith("broker:")),
        "lpush_by_key": pushes,
        "statements": sum(stmts.values()) if b.statements else None,
        "top_statements": dict(sorted(stmts.items(), key=lambda kv: -kv[1])[:15]),
        # The whole machine's busy CPU: what the kinds above do not add up to is someone else's.
        "machine_cpu_ms": 1000 * busy / os.sysconf("SC_CLK_TCK") / n,
    }


def fake_calls(url: str) -> int:
    """Calls the fake provider has answered (its control endpoint, not a chat call)."""
    return int(httpx.get(f"{url}/control/stats", timeout=5).json()["total"])


def drive(meter: Meter, path: str, body: bytes, n: int, *, wait_done: bool) -> tuple[Any, float]:
    """n POSTs on 32 connections; with `wait_done`, then until n more tasks signalled they finished.
    Returns the load result and the load generator's CPU seconds (this thread's)."""
    stack = meter.stack
    done0 = meter.pushes["done-signal"]
    cpu0 = time.thread_time()
    res = run_raw(f"{stack.url}{path}", auth=stack.key, connections=CONNECTIONS, total=n, body=body)
    load_cpu = time.thread_time() - cpu0
    if res.non_2xx or res.errors or res.requests != n:
        raise BenchError(f"{path}: {res.requests} sent, {res.non_2xx} non-2xx, {res.errors} socket errors")
    if wait_done:
        wait_until(lambda: meter.pushes["done-signal"] - done0 >= n, timeout=600, what=f"{n} done signals")
    return res, load_cpu


def measure(meter: Meter, sz: Sizes, label: str, path: str, body: bytes, idle: dict[str, Any]) -> dict[str, Any]:
    """One workload of sz.n tasks between two quiet snapshots; the per-task figures and their checks."""
    stack = meter.stack
    tasks0, calls0 = stack.count("SELECT count(*) FROM tasks"), fake_calls(stack.fake_url)
    stmts0 = meter.statements()
    time.sleep(sz.settle_s)
    before = meter.read()
    before.statements = stmts0
    res, load_cpu = drive(meter, path, body, sz.n, wait_done=path == "/v1/tasks")
    busy_s = time.perf_counter() - before.at
    time.sleep(sz.settle_s)
    after = meter.read()
    after.statements = meter.statements()
    created = stack.count("SELECT count(*) FROM tasks") - tasks0
    unfinished = stack.count("SELECT count(*) FROM tasks WHERE status <> 'succeeded'")
    calls = fake_calls(stack.fake_url) - calls0
    if created != sz.n or unfinished or calls != sz.n:
        raise BenchError(f"{label}: {created} tasks created, {unfinished} not succeeded, {calls} fake calls")
    out = deltas(before, after, sz.n)
    out["cpu_ms"]["load"] = 1000 * load_cpu / sz.n
    window = after.at - before.at
    out |= {
        "tasks": sz.n,
        "seconds": busy_s,
        "tasks_per_s": sz.n / busy_s,
        "window_s": window,
        "latency_p50_ms": res.latency_p50_ms,
        "latency_p99_ms": res.latency_p99_ms,
        "idle_per_task": {
            "cpu_ms": {k: v * window / sz.n for k, v in idle["cpu_ms"].items()},
            "xact_commit": idle["postgres"]["xact_commit"] * window / sz.n,
            "redis_commands": idle["redis_commands"] * window / sz.n,
        },
    }
    cpu = out["cpu_ms"]
    log(f"  task_cost {label}: {sz.n} tasks in {busy_s:.1f}s; CPU ms/task "
        + " ".join(f"{k} {cpu[k]:.2f}" for k in KINDS)
        + f"; {out['postgres']['xact_commit']:.2f} xact, {out['redis_commands']:.1f} redis cmds, "
        f"{out['broker_messages']:.2f} broker msgs per task")  # fmt: skip
    return out


def run(opts: Options) -> Result:
    """Private Redis, the stack, a warm-up, an idle window, then the synchronous and the async workload."""
    sz = opts.sizes("task_cost", FULL, QUICK)
    tmp = opts.tmp / "task_cost"
    tmp.mkdir(parents=True, exist_ok=True)
    redis_proc, redis_base = start_redis(tmp)
    try:
        env = Env("task_cost", REDIS_DB, tmp, redis_base=redis_base)
        try:
            stack = Switchyard(env, fake_latency_ms=0)
            worker = stack.start_worker(
                sz.worker_concurrency, queues=QUEUES, max_in_flight=sz.max_in_flight, name="worker"
            )
            wait_worker(worker)
            meter = Meter(env, stack, worker, redis_proc)
            try:
                for path, body in (("/v1/chat/completions", SYNC_BODY), ("/v1/tasks", CHAT_BODY)):
                    drive(meter, path, body, sz.warm, wait_done=True)
                time.sleep(sz.settle_s)
                quiet = meter.read()
                time.sleep(sz.idle_s)
                idle_end = meter.read()
                idle = deltas(quiet, idle_end, idle_end.at - quiet.at)
                workloads = {
                    "sync": measure(meter, sz, "sync", "/v1/chat/completions", SYNC_BODY, idle),
                    "tasks": measure(meter, sz, "tasks", "/v1/tasks", CHAT_BODY, idle),
                }
            finally:
                meter.close()
            return {
                "ours": sum(workloads["tasks"]["cpu_ms"][k] for k in KINDS if k != "load"),
                "baseline": None,
                "unit": "server CPU ms/task",
                "ratio": None,
                "target": None,
                "target_kind": "none: report it",
                "sizes": asdict(sz),
                "worker": f"{QUEUES}, threads x{sz.worker_concurrency}, max_in_flight {sz.max_in_flight}",
                "connections": CONNECTIONS,
                "load_tool": "asyncio (bench.harness.run_raw, exactly N requests)",
                "pg_stat_statements": meter.pgss_error or "available",
                "idle_per_s": idle,
                "workloads": workloads,
                "caveats": [
                    "postgres CPU is every `postgres` process on the machine: other databases' work is included "
                    "(other_databases_xact_commit shows how much there was)",
                    "WAL bytes are cluster-wide: other databases' writes are included",
                    "figures include the stack's idle background over the window (idle_per_task), not subtracted",
                    "keyspace notifications (to count LPUSHes by key) cost redis-server a little CPU",
                ],
            }
        finally:
            env.close()
    finally:
        redis_proc.stop()


def rows(name: str, res: Result) -> list[Row]:
    """Per workload: CPU per process kind, then Postgres, Redis and broker counts per task."""
    out: list[Row] = []
    for label, w in res["workloads"].items():
        cpu, pg = w["cpu_ms"], w["postgres"]
        what = "POST /v1/chat/completions" if label == "sync" else "POST /v1/tasks"
        out.append((f"{name} {what}", "CPU ms/task: " + ", ".join(f"{k} {cpu[k]:.2f}" for k in KINDS)))
        stmts = f", {w['statements']:.1f} statements" if w["statements"] is not None else ""
        out.append((
            "  per task",
            f"pg {pg['xact_commit']:.2f} commits + {pg['xact_rollback']:.2f} rollbacks{stmts}, "
            f"{pg['tup_inserted']:.2f} ins, {pg['tup_updated']:.2f} upd, "
            f"{pg['wal_bytes'] / 1024:.1f} kB WAL; redis {w['redis_commands']:.1f} cmds; "
            f"{w['broker_messages']:.2f} broker msgs",
        ))  # fmt: skip
    return out


def details(res: Result) -> None:
    """Per-command Redis calls, LPUSHes by key, top statements, idle background and unaccounted CPU."""
    print(f"task_cost: {res['sizes']['n']} tasks per workload, {res['connections']} connections, worker "
          f"{res['worker']}; pg_stat_statements: {res['pg_stat_statements']}")  # fmt: skip
    idle = res["idle_per_s"]
    print("  idle stack per second: CPU ms " + ", ".join(f"{k} {v:.1f}" for k, v in idle["cpu_ms"].items())
          + f"; {idle['postgres']['xact_commit']:.1f} xact, {idle['redis_commands']:.1f} redis cmds")  # fmt: skip
    for label, w in res["workloads"].items():
        accounted = sum(w["cpu_ms"].values())
        print(f"  {label}: {w['tasks_per_s']:.0f} tasks/s, p50 {w['latency_p50_ms']:.1f} ms; machine CPU "
              f"{w['machine_cpu_ms']:.2f} ms/task, of which {w['machine_cpu_ms'] - accounted:.2f} not in the kinds "
              f"above; other databases {w['other_databases_xact_commit']:.2f} xact/task; idle share "
              f"{w['idle_per_task']['xact_commit']:.2f} xact, {w['idle_per_task']['redis_commands']:.2f} redis "
              f"cmds per task")  # fmt: skip
        pg = w["postgres"]
        print("    postgres per task: " + ", ".join(f"{k} {v:.2f}" for k, v in pg.items()))
        shown = {k: v for k, v in w["redis_by_command"].items() if v >= 0.005}
        print("    redis per task: " + ", ".join(f"{k} {v:.2f}" for k, v in shown.items()))
        print("    LPUSH per task by key: " + ", ".join(f"{k} {v:.2f}" for k, v in w["lpush_by_key"].items()))
        for query, calls in w["top_statements"].items():
            print(f"    {calls:6.2f}  {' '.join(query.split())[:110]}")


BENCHMARK = Benchmark(
    name="task_cost",
    summary="per-task CPU of each process, Postgres xacts/rows/WAL, Redis commands, broker messages (no target)",
    run=run,
    rows=rows,
    details=details,
)
