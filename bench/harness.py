"""What the benchmarks need to run real processes: fresh databases, Redis DBs, process groups, load generators.

Ports, polling, databases and process groups are `tests.processes`, shared with the tests; what is here is
the benchmarks' own: `BenchError` instead of assertions, `Env`, load generation, samplers and py-spy,
measuring the machine. Our stack and LiteLLM's are in `bench.stack`; the benchmarks in `bench.benchmarks`.
Everything here talks to 127.0.0.1 only, and every wait is bounded.

Postgres and Redis come from SWITCHYARD_BENCH_PG (an admin URL; each benchmark creates and drops its own
database) and SWITCHYARD_BENCH_REDIS (a server URL without a DB number; each benchmark flushes its own DB).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis

from tests import processes
from tests.processes import ROOT, Process, cli, create_database, drop_database

PG_ADMIN_URL = os.environ.get("SWITCHYARD_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("SWITCHYARD_BENCH_REDIS", "redis://127.0.0.1:6379")

CHAT_BODY = b'{"type":"chat","model":"chat-default","input":{"messages":[{"role":"user","content":"hello bench"}]}}'

FAKE_CONFIG = """
providers:
  fake: {{kind: openai, base_url: "{fake}/v1", api_key: fake}}
models:
  chat-default:
    type: chat
    deployments:
      - {{provider: fake, model: gpt-4o-mini, price: {{input: 0.15, output: 0.60, cached_input: 0.075}}}}
"""


# The ML benchmark's stack: one onnx provider and one predict model; the provider's options are set per run.
ML_CONFIG = """
providers:
  onnx: {{kind: onnx, {provider_options}}}
models:
  risk-classifier:
    type: predict
    deployments:
      - {{provider: onnx, model: "{model_path}", price: {{per_1k_predictions: 0.5}}}}
"""


RESULTS_DIR = Path(__file__).with_name("results")


class BenchError(RuntimeError):
    """A benchmark could not run or its output was wrong; the runner records it and goes on with the next."""


def log(msg: str) -> None:
    """One progress line on stdout, timestamped."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def wait_until(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.05, what: str = "") -> Any:
    return processes.wait_until(predicate, timeout=timeout, interval=interval, what=what, error=BenchError)


# --- Postgres and Redis ----------------------------------------------------------------------------------------


def sql_one(url: str, query: str, *params: Any) -> Any:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
        return row[0] if row else None


# --- processes -------------------------------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    """Resident set size of one process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Env:
    """One benchmark's world: a fresh database, a Redis DB, a temp dir, the processes it started.

    `redis_base` is the server (default SWITCHYARD_BENCH_REDIS); a benchmark that counts Redis commands passes
    its own server's, since other traffic on a shared one would be counted too."""

    name: str
    redis_db: int
    tmp: Path
    redis_base: str = REDIS_BASE
    db_name: str = ""
    database_url: str = ""
    redis_url: str = ""
    processes: list[Process] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.db_name, self.database_url = create_database(PG_ADMIN_URL, f"bench_{self.name}")
        self.redis_url = f"{self.redis_base}/{self.redis_db}"
        self.redis = redis.Redis.from_url(self.redis_url)
        self.redis.flushdb()
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "SWITCHYARD_DATABASE_URL": self.database_url,
            "SWITCHYARD_REDIS_URL": self.redis_url,
            "SWITCHYARD_DATA_DIR": str(self.tmp / "data"),
            # A worker leads the periodic duties (the sweeps), which must not republish what the benchmark is
            # timing.
            "SWITCHYARD_REQUEUE_AFTER_S": "600",
        }

    def start(self, name: str, argv: list[str], extra_env: dict[str, str] | None = None) -> Process:
        proc = Process(name, argv, {**self.env, **(extra_env or {})}, self.tmp, stop_timeout=20)
        self.processes.append(proc)
        return proc

    def run_cli(self, *args: str) -> str:
        done = subprocess.run(cli(*args), env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise BenchError(f"switchyard {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def close(self) -> None:
        for proc in reversed(self.processes):
            try:
                proc.stop()
            except Exception as exc:  # keep stopping the others
                print(f"  warning: stopping {proc.name}: {exc}", file=sys.stderr)
        try:
            self.redis.flushdb()
            self.redis.close()
        finally:
            drop_database(PG_ADMIN_URL, self.db_name)


def wait_http(url: str, proc: Process, timeout: float = 60) -> None:
    processes.wait_http(url, proc, timeout, error=BenchError, log_tail=3000)


def wait_log(proc: Process, needle: str, timeout: float = 60, interval: float = 0.01) -> float:
    """Poll the process log until `needle` shows; returns the monotonic time it was seen."""

    def seen() -> bool:
        if not proc.alive():
            raise BenchError(f"{proc.name} exited early:\n{proc.log()[-3000:]}")
        return needle in proc.log()

    wait_until(seen, timeout=timeout, interval=interval, what=f"'{needle}' from {proc.name}")
    return time.monotonic()


# --- load generation -------------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    requests: int
    seconds: float
    rps: float
    non_2xx: int
    errors: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    tool: str


def _wrk_ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def run_wrk(
    url: str, *, auth: str | None, connections: int, seconds: float, threads: int = 1, body: bytes = CHAT_BODY
) -> LoadResult:
    script = Path(__file__).with_name("wrk_post.lua")
    env = {**os.environ, "BENCH_AUTH": auth or "", "BENCH_BODY": body.decode()}
    argv = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
        "--timeout", "10s", "-s", str(script), url,
    ]  # fmt: skip
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 60)
    out = done.stdout
    if done.returncode != 0 or "Requests/sec" not in out:
        raise BenchError(f"wrk failed:\n{out}\n{done.stderr}")
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    assert total is not None
    secs = float(total.group(2)) * {"s": 1, "ms": 0.001, "m": 60}.get(total.group(3), 1)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    p50 = re.search(r"\s50%\s+(\S+)", out)
    p99 = re.search(r"\s99%\s+(\S+)", out)
    return LoadResult(
        requests=int(total.group(1)),
        seconds=secs,
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
        errors=sum(int(x) for x in errs.groups()) if errs else 0,
        latency_p50_ms=_wrk_ms(p50.group(1)) if p50 else None,
        latency_p99_ms=_wrk_ms(p99.group(1)) if p99 else None,
        tool="wrk",
    )


def _request_bytes(
    host: str, port: int, path: str, auth: str | None, body: bytes, content_type: str = "application/json"
) -> bytes:
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: keep-alive",
    ]
    if auth:
        head.append(f"Authorization: Bearer {auth}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _raw_load(
    host: str,
    port: int,
    path: str,
    auth: str | None,
    *,
    connections: int,
    seconds: float | None,
    total: int | None,
    body: bytes = CHAT_BODY,
    content_type: str = "application/json",
) -> tuple[int, int, int, float, list[float]]:
    """Keep-alive HTTP/1.1 POSTs on `connections` sockets, for `seconds` or until `total` requests were sent."""
    request = _request_bytes(host, port, path, auth, body, content_type)
    counters = {"sent": 0, "ok": 0, "bad": 0, "err": 0}
    latencies: list[float] = []
    t0 = time.perf_counter()
    deadline = t0 + seconds if seconds is not None else None

    def more() -> bool:
        if total is not None and counters["sent"] >= total:
            return False
        return deadline is None or time.perf_counter() < deadline

    async def one_connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while more():
                counters["sent"] += 1
                start = time.perf_counter()
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                status = int(head.split(b" ", 2)[1])
                m = re.search(rb"(?i)content-length:\s*(\d+)", head)
                if m:
                    await reader.readexactly(int(m.group(1)))
                latencies.append(time.perf_counter() - start)
                counters["ok" if 200 <= status < 300 else "bad"] += 1
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            counters["err"] += 1
        finally:
            writer.close()

    await asyncio.gather(*(one_connection() for _ in range(connections)))
    return counters["ok"], counters["bad"], counters["err"], time.perf_counter() - t0, latencies


def run_raw(
    url: str,
    *,
    auth: str | None,
    connections: int,
    seconds: float | None = None,
    total: int | None = None,
    body: bytes = CHAT_BODY,
    content_type: str = "application/json",
) -> LoadResult:
    """The asyncio load generator: used to create N tasks, as the load tool when wrk is missing, and for bodies
    wrk's script cannot send (binary ones: images)."""
    m = re.match(r"http://([^:/]+):(\d+)(/.*)", url)
    assert m is not None, url
    host, port, path = m.group(1), int(m.group(2)), m.group(3)
    ok, bad, err, secs, lat = asyncio.run(
        _raw_load(
            host,
            port,
            path,
            auth,
            connections=connections,
            seconds=seconds,
            total=total,
            body=body,
            content_type=content_type,
        )
    )
    lat.sort()

    def pct(p: float) -> float | None:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else None

    n = ok + bad
    return LoadResult(n, secs, n / secs if secs else 0.0, bad, err, pct(0.5), pct(0.99), "asyncio")


_warned_no_wrk = False


def load(url: str, *, auth: str | None, connections: int, seconds: float, body: bytes = CHAT_BODY) -> LoadResult:
    """Keep-alive POSTs of `body` on `connections` connections for `seconds`: wrk when present, else asyncio."""
    global _warned_no_wrk
    if shutil.which("wrk"):
        return run_wrk(url, auth=auth, connections=connections, seconds=seconds, body=body)
    if not _warned_no_wrk:
        # The asyncio generator shares this process's core with the runner and tops out far below wrk: its req/s
        # are not comparable with a wrk run's, and on 2 cores it can be the bottleneck of both sides.
        log("  WARNING: wrk is not installed (apt-get install -y wrk); using the asyncio load generator instead")
        _warned_no_wrk = True
    return run_raw(url, auth=auth, connections=connections, seconds=seconds, body=body)


def load_tool() -> str:
    """What `load` will use, for the results file."""
    return "wrk" if shutil.which("wrk") else "asyncio (wrk not installed)"


# --- sampling and profiling -----------------------------------------------------------------------------------


class Sampler:
    """Polls `sample()` every `interval` seconds on a thread until stopped."""

    def __init__(self, sample: Callable[[], None], interval: float) -> None:
        self._sample = sample
        self._interval = interval
        self._stop = threading.Event()
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sample()
            except Exception as exc:
                self.errors.append(repr(exc))
            self._stop.wait(self._interval)

    def stop(self) -> None:
        """Stop polling and wait for the thread (bounded)."""
        self._stop.set()
        self._thread.join(10)


class Profiler:
    """py-spy record of one process, as collapsed stacks in bench/results/, when --profile is on."""

    def __init__(self, enabled: bool, pid: int, name: str, seconds: float) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.path = RESULTS_DIR / f"profile-{name}.txt"
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not enabled or not Path(exe).exists():
            return
        argv = [exe, "record", "--pid", str(pid), "--format", "raw", "--rate", "100", "--threads",
                "--duration", str(max(1, round(seconds))), "--nonblocking", "-o", str(self.path)]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        """Stop recording (py-spy writes its file on SIGINT)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# --- measuring the machine -------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all cores since boot, from /proc/stat; differences of two give the load."""
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def machine_busy_pct(seconds: float = 1.0) -> float:
    """How busy all cores are (0-100) over `seconds`: other work on the machine skews every ratio."""
    busy0, total0 = machine_cpu_ticks()
    time.sleep(seconds)
    busy1, total1 = machine_cpu_ticks()
    return 100.0 * (busy1 - busy0) / max(1, total1 - total0)
