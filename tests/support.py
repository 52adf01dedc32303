"""Running the real thing for tests: processes of the `switchyard` CLI against Postgres, Redis and the fake."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import psycopg.types.json
import redis

from switchyard.defaults import MODELS_DIR
from tests.processes import ROOT, Process, cli, create_database, drop_database, free_port, wait_http, wait_until

__all__ = [
    "FINISHED",
    "PG_ADMIN_URL",
    "ROOT",
    "Process",
    "Stack",
    "chat",
    "cli",
    "create_database",
    "drop_database",
    "free_port",
    "wait_http",
    "wait_status",
    "wait_task",
    "wait_until",
]

PG_ADMIN_URL = os.environ.get("SWITCHYARD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("SWITCHYARD_TEST_REDIS", "redis://127.0.0.1:6379")


TEST_CONFIG = """
# The shared stack's tests fail calls on purpose all the time; its breakers open only in tests that say so
# (their models set their own).
routing:
  breaker: {{min_requests: 100000}}
# A named tier keys and tenants may be given (tests/test_limits.py).
tiers:
  tiny: {{max_per_call_usd: 0.0001, limits: {{rpm: 2}}}}
providers:
  fake:           {{kind: openai,    base_url: "{fake}/v1", api_key: fake}}
  fake-b:         {{kind: openai,    base_url: "{fake_b}/v1", api_key: fake}}
  fake-anthropic: {{kind: anthropic, base_url: "{fake}",    api_key: fake}}
  onnx:           {{kind: onnx, max_batch_size: 32, max_batch_wait_ms: 5}}
  kserve:         {{kind: kserve,    base_url: "{kserve}"}}
  tfserving:      {{kind: tfserving, base_url: "{tfserving}"}}
models:
  chat-default:
    type: chat
    deployments:
      - {{provider: fake, model: gpt-4o-mini,
          price: {{input: 0.15, output: 0.60, cached_input: 0.075, batch: {{input: 0.075, output: 0.30}}}}}}
  claude:
    type: chat
    deployments:
      - {{provider: fake-anthropic, model: claude-haiku-4-5,
          price: {{input: 0.80, output: 4.00, cached_input: 0.08, cache_write: 1.00}}}}
  chat-failover:
    type: chat
    deployments:
      - {{provider: fake, model: gpt-4o-mini, price: {{input: 0.15, output: 0.60}}}}
      - {{provider: fake-anthropic, model: claude-haiku-4-5, price: {{input: 0.80, output: 4.00}}}}
  embed-default:
    type: embed
    deployments:
      - {{provider: fake, model: text-embedding-3-small, price: {{input: 0.02}}}}
  moderate-default:
    type: moderate
    deployments:
      - {{provider: fake, model: omni-moderation-latest}}
  risk-classifier:
    type: predict
    deployments:
      - {{provider: onnx, model: "{models}/risk_classifier.onnx", price: {{per_1k_predictions: 0.5}}}}
  revenue-regressor:
    type: predict
    deployments:
      - {{provider: onnx, model: "{models}/revenue_regressor.onnx", price: {{per_compute_second: 2.0}}}}
  risk-kserve:
    type: predict
    deployments:
      - {{provider: kserve, model: risk_classifier}}
  risk-tfserving:
    type: predict
    deployments:
      - {{provider: tfserving, model: risk_classifier}}
  risk-remote-first:
    type: predict
    deployments:
      - {{provider: kserve, model: risk_classifier}}
      - {{provider: onnx, model: "{models}/risk_classifier.onnx"}}
"""


class Stack:
    """One complete deployment for tests: its own database, Redis DB, fake provider, API and workers."""

    def __init__(
        self,
        tmp: Path,
        redis_db: int,
        *,
        provider_worker: bool = True,
        ml: bool = True,
        env: dict[str, str] | None = None,
        second_fake: bool = False,
        extra_models: str = "",
        provider_workers: int = 1,
        database_url_for: Callable[[str], str] | None = None,
    ) -> None:
        self.tmp = tmp
        self.processes: list[Process] = []
        self.db_name, self.database_url = create_database(PG_ADMIN_URL, "switchyard_test")
        self.redis_url = f"{REDIS_BASE}/{redis_db}"
        self.redis = redis.Redis.from_url(self.redis_url)
        self.redis.flushdb()
        fake_port, api_port, kserve_port, tfserving_port = free_port(), free_port(), free_port(), free_port()
        self.fake_url = f"http://127.0.0.1:{fake_port}"
        # A second fake server (provider `fake-b`), for routing between providers that fail independently.
        fake_b_port = free_port()
        self.fake_b_url = f"http://127.0.0.1:{fake_b_port}"
        self.url = f"http://127.0.0.1:{api_port}"
        self.kserve_url = f"http://127.0.0.1:{kserve_port}"
        self.tfserving_url = f"http://127.0.0.1:{tfserving_port}"
        config = tmp / "switchyard.yaml"
        config.write_text(
            TEST_CONFIG.format(
                fake=self.fake_url,
                fake_b=self.fake_b_url,
                kserve=self.kserve_url,
                tfserving=self.tfserving_url,
                models=MODELS_DIR,
            )
            + extra_models
        )
        self.env = {
            **os.environ,
            # The processes may reach the database another way than the test does (through a proxy a test cuts).
            "SWITCHYARD_DATABASE_URL": database_url_for(self.database_url) if database_url_for else self.database_url,
            "SWITCHYARD_REDIS_URL": self.redis_url,
            "SWITCHYARD_CONFIG": str(config),
            "SWITCHYARD_DATA_DIR": str(tmp / "data"),
            "SWITCHYARD_SWEEP_INTERVAL_S": "1",
            "SWITCHYARD_REQUEUE_AFTER_S": "3",
            "SWITCHYARD_LEASE_GRACE_S": "2",
            "SWITCHYARD_DEFAULT_TIMEOUT_S": "10",
            "SWITCHYARD_RETRY_BASE_S": "0.05",
            "SWITCHYARD_RETRY_MAX_S": "0.2",
            "SWITCHYARD_API_KEY_CACHE_S": "1",
            "SWITCHYARD_DB_POOL_SIZE": "5",
            "SWITCHYARD_DB_MAX_OVERFLOW": "5",
            # Low enough for a test to reach, high enough for the 200-listener test.
            "SWITCHYARD_WS_MAX_CONNECTIONS_PER_TENANT": "250",
            # Streams that wait get keep-alives in the tests too, between their events.
            "SWITCHYARD_SSE_KEEPALIVE_S": "1",
            **(env or {}),
        }
        try:
            self.run_cli("migrate")
            self.fake = self.start("fake", cli("fake-provider", "--port", str(fake_port)))
            wait_http(f"{self.fake_url}/healthz", self.fake)
            if second_fake:
                self.fake_b = self.start("fake-b", cli("fake-provider", "--port", str(fake_b_port)))
                wait_http(f"{self.fake_b_url}/healthz", self.fake_b)
            if ml:
                for protocol, port in (("kserve", kserve_port), ("tfserving", tfserving_port)):
                    server = self.start(
                        protocol,
                        [
                            sys.executable,
                            "-m",
                            "tests.servers.model_server",
                            "--protocol",
                            protocol,
                            "--port",
                            str(port),
                            "--models-dir",
                            str(MODELS_DIR),
                        ],
                    )
                    wait_http(f"http://127.0.0.1:{port}/healthz", server)
            self.api = self.start("api", cli("api", "--port", str(api_port)))
            # Control work in one worker, provider calls (and batch lines) in their own. No beat and no scheduler:
            # the workers run the periodic duties themselves (one leads at a time).
            self.control = self.start_worker("control,webhooks")
            self.provider: Process | None = self.start_worker("provider,batch") if provider_worker else None
            self.more_providers = [self.start_worker("provider") for _ in range(provider_workers - 1)]
            self.ml: Process | None = self.start_worker("ml", concurrency=32) if ml else None
            wait_http(f"{self.url}/healthz", self.api)
        except BaseException:
            self.close()
            raise

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Process:
        proc = Process(name, argv, {**self.env, **(env or {})}, self.tmp)
        self.processes.append(proc)
        return proc

    def start_worker(self, queues: str, *, concurrency: int = 50, loglevel: str = "INFO") -> Process:
        argv = cli("worker", "--queues", queues, "--concurrency", str(concurrency), "--loglevel", loglevel)
        proc = self.start(f"worker-{queues.replace(',', '-')}", argv)
        wait_until(lambda: "ready." in proc.log() or not proc.alive(), timeout=60, what=f"worker {queues}")
        assert proc.alive(), proc.log()[-4000:]
        return proc

    def run_cli(self, *args: str, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            cli(*args), env={**self.env, **(env or {})}, cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def new_key(self, tenant: str, role: str = "admin") -> str:
        return self.run_cli("keys", "create", "--tenant", tenant, "--role", role).strip().splitlines()[-1]

    def set_policy(
        self,
        key: str,
        *,
        limits: dict[str, Any] | None = None,
        budget: dict[str, Any] | None = None,
        tier: str | None = None,
        tenant: bool = False,
    ) -> None:
        """Give a key (or, `tenant`, its tenant) limits, a budget or a tier, straight in the database (the
        API caches a key for SWITCHYARD_API_KEY_CACHE_S: set it before the key's first call)."""
        where = "prefix = %s" if not tenant else "id = (SELECT tenant_id FROM api_keys WHERE prefix = %s)"
        table = "tenants" if tenant else "api_keys"
        self.sql(
            f"UPDATE {table} SET limits = %s, budget = %s, tier = %s WHERE {where} RETURNING id",
            None if limits is None else psycopg.types.json.Jsonb(limits),
            None if budget is None else psycopg.types.json.Jsonb(budget),
            tier,
            key[:10],
        )

    def key_id(self, key: str) -> str:
        return str(self.sql("SELECT id FROM api_keys WHERE prefix = %s", key[:10])[0][0])

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url) as conn:
            return list(conn.execute(query, params).fetchall())

    def fake_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = httpx.get(f"{self.fake_url}/control/stats").json()
        return stats

    def close(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
        self.redis.flushdb()
        self.redis.close()
        drop_database(PG_ADMIN_URL, self.db_name)


FINISHED = ("succeeded", "failed", "canceled")


def wait_status(
    client: httpx.Client, path: str, statuses: tuple[str, ...] = FINISHED, timeout: float = 30
) -> dict[str, Any]:
    """Poll GET `path` (a task or a run) until its status is one of `statuses`; return the last body."""

    def reached() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(path).json()
        return body if body.get("status") in statuses else None

    result: dict[str, Any] = wait_until(reached, timeout=timeout, interval=0.1, what=f"{path} in {statuses}")
    return result


def wait_task(
    client: httpx.Client, task_id: str, statuses: tuple[str, ...] = FINISHED, timeout: float = 30
) -> dict[str, Any]:
    return wait_status(client, f"/v1/tasks/{task_id}", statuses, timeout)


def chat(text: str, **input_fields: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **input_fields}
