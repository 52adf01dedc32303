"""The stacks the benchmarks start: ours (migrated database, fake provider, API, workers), baseline workers.

They run as real processes inside an `Env`, so that they are stopped (and their database dropped) whatever
happens to the benchmark.
"""

from __future__ import annotations

import os
import sys
import time

from bench.harness import FAKE_CONFIG, BenchError, Env, log, run_raw, sql_one, wait_http, wait_log
from tests.processes import Process, cli, free_port

PROVIDER_QUEUE = "provider"
# The pool both sides run: the one `switchyard worker` picks for provider calls.
POOL = "threads"
CONNECTIONS = 32


def start_fake(env: Env, latency_ms: int, port: int | None = None) -> tuple[Process, str]:
    """`switchyard fake-provider` answering after `latency_ms`; returns it and its base URL (OpenAI at /v1)."""
    port = port or free_port()
    proc = env.start("fake", cli("fake-provider", "--port", str(port), "--latency-ms", str(latency_ms)))
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz", proc)
    return proc, url


def wait_worker(proc: Process) -> float:
    """Wait for a Celery worker's 'ready.' line; returns when it was seen (monotonic)."""
    return wait_log(proc, "ready.", timeout=90)


class Switchyard:
    """Our stack inside an Env: migrated database, config pointing at the fake, API, an admin key."""

    def __init__(self, env: Env, *, fake_latency_ms: int | None, api: bool = True) -> None:
        self.env = env
        env.run_cli("migrate")
        fake_port = free_port()
        self.fake_url = f"http://127.0.0.1:{fake_port}"
        config = env.tmp / "switchyard.yaml"
        config.write_text(FAKE_CONFIG.format(fake=self.fake_url))
        env.env["SWITCHYARD_CONFIG"] = str(config)
        self.fake: Process | None = None
        if fake_latency_ms is not None:
            self.fake, _ = start_fake(env, fake_latency_ms, fake_port)
        self.url = f"http://127.0.0.1:{free_port()}"
        self.api: Process | None = None
        if api:
            self.api = env.start("api", cli("api", "--port", self.url.rsplit(":", 1)[1]))
            wait_http(f"{self.url}/healthz", self.api)
        self.key = env.run_cli("keys", "create", "--tenant", "bench", "--role", "admin").strip().splitlines()[-1]

    def create_tasks(self, n: int) -> float:
        """Queue n chat tasks through the API (no worker consumes yet); returns the seconds it took."""
        t0 = time.perf_counter()
        remaining = n
        for _ in range(5):
            res = run_raw(f"{self.url}/v1/tasks", auth=self.key, connections=16, total=remaining)
            have = self.count("SELECT count(*) FROM tasks")
            remaining = n - have
            if remaining <= 0:
                break
            log(f"  {res.non_2xx} non-2xx / {res.errors} errors while creating tasks; {remaining} to go")
        have = self.count("SELECT count(*) FROM tasks")
        queued = self.env.redis.llen(PROVIDER_QUEUE)
        if have != n or queued != n:
            raise BenchError(f"wanted {n} queued tasks, have {have} rows and {queued} messages")
        return time.perf_counter() - t0

    def count(self, query: str) -> int:
        """One integer from our database."""
        return int(sql_one(self.env.database_url, query))

    def start_worker(self, concurrency: int, *, queues: str = PROVIDER_QUEUE, name: str = "worker-provider") -> Process:
        """`switchyard worker` on `queues` with the threads pool."""
        argv = ["worker", "--queues", queues, "--pool", POOL, "--concurrency", str(concurrency), "--loglevel", "INFO"]
        return self.env.start(name, cli(*argv))

    def window_s(self) -> float:
        """First claim to last finish, from the rows' own timestamps."""
        return float(
            sql_one(
                self.env.database_url,
                "SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM tasks WHERE status='succeeded'",
            )
        )


def start_celery_worker(
    env: Env, name: str, app: str, queue: str, concurrency: int, extra_env: dict[str, str]
) -> Process:
    """A baseline's plain Celery worker (`celery -A app worker`), with our provider worker's pool, on `queue`."""
    argv = [
        sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queue, "-P", POOL, "-c", str(concurrency),
        "-n", f"bench-{name}-{os.getpid()}@%h", "--without-gossip", "--without-mingle", "--loglevel", "INFO",
    ]  # fmt: skip
    return env.start(name, argv, extra_env)
