"""The drill's own deployment: a private Postgres and Redis it may crash, the fake provider, two API processes and
three workers, all real processes in their own process groups.

Postgres is a private instance (initdb in a temp dir, its own port) because the machine's Postgres is shared:
restarting it would break other people's work. Redis is a private `redis-server` without persistence, so a
restart loses every message and key, as a flushed broker does.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import redis

from bench.drill.receiver import Receiver
from switchyard.defaults import MODELS_DIR
from tests.processes import Process, cli, free_port, wait_http, wait_until

DRILL_CONFIG = """
routing:
  breaker: {{min_requests: 100000}}
providers:
  fake: {{kind: openai, base_url: "{fake}/v1", api_key: fake}}
  onnx: {{kind: onnx, max_batch_size: 32, max_batch_wait_ms: 5}}
models:
  chat-default:
    type: chat
    deployments:
      - {{provider: fake, model: gpt-4o-mini, price: {{input: 0.15, output: 0.60}}}}
  embed-default:
    type: embed
    deployments:
      - {{provider: fake, model: text-embedding-3-small, price: {{input: 0.02}}}}
  risk-classifier:
    type: predict
    deployments:
      - {{provider: onnx, model: "{models}/risk_classifier.onnx", price: {{per_1k_predictions: 0.5}}}}
"""

# Short leases, sweeps and webhook retries: the drill waits for recovery, it does not want to wait for the
# production defaults (a minute before a lost message is re-published, 5 min before a webhook's second try).
DRILL_ENV = {
    "PYTHONUNBUFFERED": "1",
    "SWITCHYARD_SWEEP_INTERVAL_S": "1",
    "SWITCHYARD_REQUEUE_AFTER_S": "4",
    "SWITCHYARD_LEASE_GRACE_S": "3",
    "SWITCHYARD_DEFAULT_TIMEOUT_S": "10",
    "SWITCHYARD_RETRY_BASE_S": "0.05",
    "SWITCHYARD_RETRY_MAX_S": "0.5",
    "SWITCHYARD_API_KEY_CACHE_S": "30",
    "SWITCHYARD_DB_POOL_SIZE": "8",
    "SWITCHYARD_DB_MAX_OVERFLOW": "4",
    "SWITCHYARD_WEBHOOK_ALLOW_PRIVATE": "true",
    "SWITCHYARD_WEBHOOK_TIMEOUT_S": "1",
    "SWITCHYARD_WEBHOOK_RETRY_SCHEDULE_S": "[0.5, 1, 1, 2, 2, 3, 3, 5, 5, 5, 5, 5]",
    "SWITCHYARD_SYNC_WAIT_S": "60",
    "SWITCHYARD_BATCH_PROGRESS_INTERVAL_S": "2",
}

API_COUNT = 2
WORKER_COUNT = 3
WORKER_CONCURRENCY = "16"


class DrillError(RuntimeError):
    """The drill could not set up or run its deployment."""


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if found:
        return Path(found[-1]).parent
    exe = shutil.which("postgres")
    return Path(exe).parent if exe else None


class PrivatePostgres:
    """A Postgres server of the drill's own (initdb'd in `root`), which it may crash and restart at will."""

    def __init__(self, root: Path) -> None:
        bindir = _postgres_bin()
        if bindir is None or not (bindir / "initdb").exists():
            raise DrillError("no initdb/postgres binaries (looked in /usr/lib/postgresql/*/bin and PATH)")
        self.bindir = bindir
        self.root = root
        self.data = root / "pgdata"
        self.sockets = root / "pgsock"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/switchyard"
        self.proc: Process | None = None
        self.restarts = 0
        # Postgres refuses to run as root: as root, the server runs as the `postgres` user (setpriv execs, so the
        # process group holds the postmaster and its children only).
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]
        for path in (self.root, self.sockets):
            path.mkdir(parents=True, exist_ok=True)
            if self._as:
                shutil.chown(path, "postgres", "postgres")
        done = subprocess.run(
            [*self._as, str(bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise DrillError(f"initdb failed: {done.stdout}{done.stderr}")
        self.start()
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE switchyard")

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        """Start the server (after a crash, Postgres recovers from its WAL first)."""
        argv = [
            *self._as,
            str(self.bindir / "postgres"),
            "-D", str(self.data),
            "-p", str(self.port),
            "-k", str(self.sockets),
            "-c", "listen_addresses=127.0.0.1",
            "-c", "max_connections=300",
            "-c", "fsync=off",  # a crash of the server, not of the machine: the WAL in the page cache survives
            "-c", "shared_buffers=64MB",
        ]  # fmt: skip
        self.proc = Process("postgres", argv, dict(os.environ), self.root, stop_timeout=20)

        def ready() -> bool:
            assert self.proc is not None
            if not self.proc.alive():
                raise DrillError(f"postgres exited:\n{self.proc.log()[-3000:]}")
            try:
                with psycopg.connect(self.admin_url, connect_timeout=2):
                    return True
            except psycopg.Error:
                return False

        wait_until(ready, timeout=60, interval=0.2, what="private postgres", error=DrillError)

    def crash_restart(self) -> None:
        """SIGKILL the postmaster and every backend, as a crash does, then start it again."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.stop()
        self.restarts += 1
        self.start()

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.alive():
                os.killpg(self.proc.pid, signal.SIGINT)  # fast shutdown
                try:
                    self.proc.proc.wait(20)
                except subprocess.TimeoutExpired:
                    pass
            self.proc.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateRedis:
    """A `redis-server` of the drill's own, without persistence: a restart starts it empty."""

    def __init__(self, root: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise DrillError("no redis-server on PATH")
        self.exe = exe
        self.root = root
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: Process | None = None
        self.restarts = 0
        self.start()

    def start(self) -> None:
        argv = [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = Process("redis", argv, dict(os.environ), self.root)
        client = redis.Redis.from_url(self.url, socket_timeout=1)

        def ready() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(ready, timeout=30, interval=0.1, what="private redis", error=DrillError)
        client.close()

    def crash_restart(self, down_s: float = 0.5) -> None:
        """SIGKILL the server (its data is gone with it) and start an empty one on the same port."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.stop()
        self.restarts += 1
        time.sleep(down_s)
        self.start()

    def used_memory(self) -> int:
        client = redis.Redis.from_url(self.url, socket_timeout=2)
        try:
            return int(client.info("memory")["used_memory"])
        finally:
            client.close()

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stop()


class Cluster:
    """Everything the drill runs: Postgres, Redis, the fake provider, the webhook receiver, APIs and workers."""

    def __init__(self, tmp: Path, *, receiver_fail: float = 0.1, receiver_hang: float = 0.03) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.processes: list[Process] = []
        self.postgres: PrivatePostgres | None = None
        self.redis: PrivateRedis | None = None
        self.receiver = Receiver(fail_rate=receiver_fail, hang_rate=receiver_hang, hang_s=3.0)
        self.apis: list[Process | None] = [None] * API_COUNT
        self.api_ports = [free_port() for _ in range(API_COUNT)]
        self.workers: list[Process | None] = [None] * WORKER_COUNT
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        self.postgres = PrivatePostgres(Path(f"/tmp/switchyard-drill-pg-{os.getpid()}"))
        self.redis = PrivateRedis(self.tmp)
        fake_port = free_port()
        self.fake_url = f"http://127.0.0.1:{fake_port}"
        config = self.tmp / "switchyard.yaml"
        config.write_text(DRILL_CONFIG.format(fake=self.fake_url, models=MODELS_DIR))
        self.env = {
            **os.environ,
            **DRILL_ENV,
            "SWITCHYARD_DATABASE_URL": self.postgres.url,
            "SWITCHYARD_REDIS_URL": self.redis.url,
            "SWITCHYARD_CONFIG": str(config),
            "SWITCHYARD_DATA_DIR": str(self.tmp / "data"),
        }
        self.run_cli("migrate")
        # Everything starts at once: on a busy machine each process takes seconds to import.
        keys = subprocess.Popen(
            cli("keys", "create", "--tenant", "drill", "--role", "admin"),
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.fake = self._spawn("fake", cli("fake-provider", "--port", str(fake_port), "--latency-ms", "20"))
        for i in range(API_COUNT):
            self.start_api(i, wait=False)
        for i in range(WORKER_COUNT):
            self.start_worker(i, wait=False)
        out, _ = keys.communicate(timeout=180)
        if keys.returncode != 0:
            raise DrillError(f"switchyard keys create failed:\n{out}")
        self.key = out.strip().splitlines()[-1]
        wait_http(f"{self.fake_url}/healthz", self.fake, error=DrillError)
        for i in range(API_COUNT):
            self._wait_api(i)
        for i in range(WORKER_COUNT):
            self._wait_worker(i)

    # --- processes ---------------------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> Process:
        proc = Process(name, argv, self.env, self.tmp, stop_timeout=15)
        self.processes.append(proc)
        return proc

    def run_cli(self, *args: str) -> str:
        done = subprocess.run(cli(*args), env=self.env, capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            raise DrillError(f"switchyard {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    @property
    def api_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.api_ports]

    def start_api(self, i: int, *, wait: bool = True) -> None:
        """API process `i` on its fixed port (a restarted one comes back where clients look for it)."""
        self.apis[i] = self._spawn(f"api{i}", cli("api", "--port", str(self.api_ports[i])))
        if wait:
            self._wait_api(i)

    def _wait_api(self, i: int) -> None:
        proc = self.apis[i]
        assert proc is not None
        wait_http(f"{self.api_urls[i]}/healthz", proc, timeout=120, error=DrillError)

    def kill_api(self, i: int) -> None:
        proc = self.apis[i]
        if proc is not None:
            proc.kill()
            proc.stop()
            self.apis[i] = None

    def start_worker(self, i: int, *, wait: bool = True) -> None:
        """Worker `i` on every queue, so that whichever worker is killed, each queue keeps a consumer."""
        argv = cli("worker", "--concurrency", WORKER_CONCURRENCY, "--loglevel", "INFO")
        self.workers[i] = self._spawn(f"worker{i}", argv)
        if wait:
            self._wait_worker(i)

    def _wait_worker(self, i: int) -> None:
        proc = self.workers[i]
        assert proc is not None

        def ready() -> bool:
            if not proc.alive():
                raise DrillError(f"worker{i} exited:\n{proc.log()[-3000:]}")
            return "ready." in proc.log()

        wait_until(ready, timeout=120, interval=0.2, what=f"worker{i}", error=DrillError)

    def kill_worker(self, i: int) -> None:
        proc = self.workers[i]
        if proc is not None:
            proc.kill()
            proc.stop()
            self.workers[i] = None

    def live_pids(self) -> dict[str, int]:
        """Name → pid of every running process of ours (the API's and workers' group leaders)."""
        pids: dict[str, int] = {}
        for i, proc in enumerate(self.apis):
            if proc is not None and proc.alive():
                pids[f"api{i}"] = proc.pid
        for i, proc in enumerate(self.workers):
            if proc is not None and proc.alive():
                pids[f"worker{i}"] = proc.pid
        if self.fake.alive():
            pids["fake"] = self.fake.pid
        return pids

    def fake_tags(self) -> dict[str, int]:
        tags: dict[str, int] = httpx.get(f"{self.fake_url}/control/tags", timeout=10).json()["tags"]
        return tags

    def close(self) -> None:
        for proc in reversed(self.processes):
            try:
                proc.stop()
            except Exception as exc:  # keep stopping the others
                print(f"  warning: stopping {proc.name}: {exc}", file=sys.stderr)
        self.receiver.close()
        if self.redis is not None:
            self.redis.close()
        if self.postgres is not None:
            self.postgres.close()
