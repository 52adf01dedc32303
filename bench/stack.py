"""The stacks the benchmarks start: ours (migrated database, fake provider, API, workers) and LiteLLM's proxy.

Both run as real processes inside an `Env`, so that they are stopped (and their database dropped) whatever
happens to the benchmark.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import sys
import time
from importlib.util import find_spec
from pathlib import Path

from bench.harness import FAKE_CONFIG, BenchError, Env, log, run_raw, sql_one, wait_http, wait_log
from tests.processes import Process, cli, free_port

PROVIDER_QUEUE = "provider"
CONTROL_QUEUE = "control"
# The pool both sides run: the one `switchyard worker` picks for provider calls.
POOL = "threads"
CONNECTIONS = 32
# The setting the worker's asyncio provider loop reads (bounds the calls in flight in one worker process);
# code that does not know it ignores it.
MAX_IN_FLIGHT_ENV = "SWITCHYARD_MAX_IN_FLIGHT"


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
        # The API's publisher thread sends the ids after the rows commit: on a busy machine it may lag a moment.
        deadline = time.monotonic() + 10
        while (queued := self.queued_ids()) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        if have != n or queued != n:
            raise BenchError(f"wanted {n} queued tasks, have {have} rows and {queued} ids in messages")
        return time.perf_counter() - t0

    def queued_ids(self) -> int:
        """Task ids in the provider queue's messages (the API puts the ids that arrive together in one)."""
        ids = 0
        for raw in self.env.redis.lrange(PROVIDER_QUEUE, 0, -1):
            args = json.loads(base64.b64decode(json.loads(raw)["body"]))[0]
            ids += len(args[0]) if isinstance(args[0], list) else 1
        return ids

    def count(self, query: str) -> int:
        """One integer from our database."""
        return int(sql_one(self.env.database_url, query))

    def start_worker(
        self,
        concurrency: int,
        *,
        queues: str = PROVIDER_QUEUE,
        max_in_flight: int | None = None,
        name: str = "worker-provider",
    ) -> Process:
        """`switchyard worker` on `queues` with the threads pool; `max_in_flight` goes in its environment."""
        extra = {MAX_IN_FLIGHT_ENV: str(max_in_flight)} if max_in_flight is not None else None
        argv = ["worker", "--queues", queues, "--pool", POOL, "--concurrency", str(concurrency), "--loglevel", "INFO"]
        return self.env.start(name, cli(*argv), extra)

    def window_s(self) -> float:
        """First claim to last finish, from the rows' own timestamps."""
        return float(
            sql_one(
                self.env.database_url,
                "SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM tasks WHERE status='succeeded'",
            )
        )


# --- LiteLLM -------------------------------------------------------------------------------------------------

LITELLM_MODEL = "chat-default"

LITELLM_PROXY_CONFIG = """
model_list:
  - model_name: {model}
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: "{fake}/v1"
      api_key: fake
litellm_settings:
  num_retries: 0
  request_timeout: 30
  telemetry: false
general_settings:
  master_key: {master_key}
"""

# What LiteLLM would otherwise do at start-up or per request and that this machine cannot or should not: fetch
# the model price map from GitHub (no internet here), send telemetry. LITELLM_LOG=ERROR is its documented
# production setting, and turns uvicorn's access log off, as ours is. No database: nothing in its environment
# names one, so the proxy keeps no spend logs and checks keys against the master key only.
# GRACEFUL_SHUTDOWN_TIMEOUT only shortens its stop at the end of the benchmark.
_LITELLM_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_TELEMETRY": "False",
    "LITELLM_LOG": "ERROR",
    "GRACEFUL_SHUTDOWN_TIMEOUT": "3",
}
_LITELLM_ENV_DROP = ("DATABASE_URL", "DIRECT_URL", "LITELLM_MASTER_KEY", "REDIS_URL", "REDIS_HOST")


def litellm_missing() -> str | None:
    """Why LiteLLM cannot run here, or None. Looked up, not imported: importing it fetches its price map."""
    # find_spec of a submodule would import the package; backoff and apscheduler come with the proxy extra only.
    if any(find_spec(name) is None for name in ("litellm", "backoff", "apscheduler")):
        return "LiteLLM's proxy is not installed: pip install -e '.[bench]' (litellm[proxy])"
    if not Path(sys.executable).with_name("litellm").exists():
        return f"no `litellm` command next to {sys.executable}: pip install -e '.[bench]'"
    return None


class LiteLLMProxy:
    """`litellm --config <yaml> --port P --num_workers 1`: LiteLLM's proxy routing `chat-default` to the fake,
    with a fixed master key and no database."""

    def __init__(self, env: Env, fake_url: str, *, name: str = "litellm-proxy") -> None:
        missing = litellm_missing()
        if missing:
            raise BenchError(missing)
        self.key = "sk-bench-" + secrets.token_hex(8)
        config = env.tmp / f"{name}.yaml"
        config.write_text(LITELLM_PROXY_CONFIG.format(model=LITELLM_MODEL, fake=fake_url, master_key=self.key))
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        exe = Path(sys.executable).with_name("litellm")
        proc_env = {k: v for k, v in env.env.items() if k not in _LITELLM_ENV_DROP and not k.startswith("SWITCHYARD_")}
        self.proc = Process(
            name,
            [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
            {**proc_env, **_LITELLM_ENV},
            env.tmp,
            stop_timeout=20,
        )
        env.processes.append(self.proc)
        # Its start-up imports a lot (a few seconds on 2 busy cores); /health/liveliness needs no key.
        wait_http(f"{self.url}/health/liveliness", self.proc, timeout=180)


def start_celery_worker(
    env: Env, name: str, app: str, queue: str, concurrency: int, extra_env: dict[str, str]
) -> Process:
    """A baseline's plain Celery worker (`celery -A app worker`), with our provider worker's pool, on `queue`."""
    argv = [
        sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queue, "-P", POOL, "-c", str(concurrency),
        "-n", f"bench-{name}-{os.getpid()}@%h", "--without-gossip", "--without-mingle", "--loglevel", "INFO",
    ]  # fmt: skip
    return env.start(name, argv, extra_env)
