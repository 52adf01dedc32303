"""Prometheus metrics from real processes: an API with two uvicorn workers (their counts add up through the
multiprocess directory) and workers serving `--metrics-port`, moved by tasks that succeed, fail over and fail."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import Process, Stack, cli, free_port, wait_http, wait_until

# fake-b is never started here: its deployments fail with a connection error (a retryable failure).
EXTRA_MODELS = """
  metrics-down:
    type: chat
    deployments:
      - {provider: fake-b, model: gpt-4o-mini, price: {input: 0.15, output: 0.60}}
  metrics-failover:
    type: chat
    deployments:
      - {provider: fake-b, model: gpt-4o-mini, price: {input: 0.15, output: 0.60}}
      - {provider: fake, model: gpt-4o-mini, price: {input: 0.15, output: 0.60}}
  metrics-fallback:
    type: chat
    deployments:
      - {provider: fake-b, model: gpt-4o-mini, price: {input: 0.15, output: 0.60}}
    fallbacks: [chat-default]
"""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Metrics:
    """A stack whose API runs two uvicorn workers and whose workers serve their metrics."""

    def __init__(self, tmp: Path) -> None:
        self.control_port, self.provider_port, api_port = free_port(), free_port(), free_port()
        self.stack = Stack(
            tmp,
            redis_db=3,
            provider_worker=False,
            ml=False,
            extra_models=EXTRA_MODELS,
            # The control worker takes its port from the environment, the provider worker from the flag.
            env={"SWITCHYARD_METRICS_PORT": str(self.control_port), "SWITCHYARD_METRICS_HOST": "127.0.0.1"},
        )
        try:
            argv = cli("worker", "--queues", "provider,batch", "--concurrency", "20", "--loglevel", "INFO")
            argv += ["--metrics-port", str(self.provider_port)]
            self.worker: Process = self.stack.start("worker-metrics", argv)
            wait_until(lambda: "ready." in self.worker.log() or not self.worker.alive(), timeout=60, what="worker")
            self.url = f"http://127.0.0.1:{api_port}"
            self.api = self.stack.start("api-2", cli("api", "--port", str(api_port), "--workers", "2"))
            wait_http(f"{self.url}/healthz", self.api)
        except BaseException:
            self.stack.close()
            raise

    def scrape(self, url: str) -> Samples:
        response = httpx.get(url, timeout=10)
        assert response.status_code == 200, response.text
        samples: Samples = {}
        for family in text_string_to_metric_families(response.text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return samples

    def api_metrics(self) -> Samples:
        return self.scrape(f"{self.url}/metrics")

    def worker_metrics(self) -> Samples:
        """The two workers' samples added up (the duties and the relay run in whichever leads)."""
        total: Samples = {}
        for port in (self.control_port, self.provider_port):
            for key, value in self.scrape(f"http://127.0.0.1:{port}/metrics").items():
                total[key] = total.get(key, 0.0) + value
        return total


@pytest.fixture(scope="module")
def metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Metrics]:
    m = Metrics(tmp_path_factory.mktemp("metrics"))
    yield m
    m.stack.close()


@pytest.fixture(scope="module")
def key(metrics: Metrics) -> str:
    return metrics.stack.new_key("metrics-co", "admin")


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def chat_call(metrics: Metrics, key: str, model: str, text: str) -> httpx.Response:
    return httpx.post(
        f"{metrics.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": model, "messages": [{"role": "user", "content": text}]},
        timeout=60,
    )


def test_counts_add_up_across_two_api_processes(metrics: Metrics) -> None:
    before = value(metrics.api_metrics(), "switchyard_http_requests_total", route="/healthz", status="200")

    def get(_: int) -> int:
        # A connection each: the kernel hands them to either process.
        return httpx.get(f"{metrics.url}/healthz", timeout=10).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(get, range(80))) == {200}
    after = metrics.api_metrics()
    assert value(after, "switchyard_http_requests_total", route="/healthz", status="200") - before == 80
    assert value(after, "switchyard_http_request_duration_seconds_count", route="/healthz", method="GET") >= 80
    # Both processes answered some of them: each writes its own counter file.
    folder = metrics.stack.tmp / "data" / "metrics" / f"api-{metrics.url.rsplit(':', 1)[1]}"
    assert len(list(folder.glob("counter_*.db"))) >= 2
    # An unknown path is one bounded label value, whatever path was tried.
    for path in ("/nope/1", "/nope/2"):
        assert httpx.get(f"{metrics.url}{path}").status_code == 404
    after = metrics.api_metrics()
    assert value(after, "switchyard_http_requests_total", route="unmatched", status="404") == 2
    assert not any("/nope/" in dict(labels).get("route", "") for _, labels in after)


def test_families_move_as_tasks_succeed_fail_over_and_fail(metrics: Metrics, key: str) -> None:
    api0, work0 = metrics.api_metrics(), metrics.worker_metrics()

    ok = chat_call(metrics, key, "chat-default", "hello metrics")
    assert ok.status_code == 200, ok.text
    over = chat_call(metrics, key, "metrics-failover", "fail over please")
    assert over.status_code == 200, over.text
    fell = chat_call(metrics, key, "metrics-fallback", "fall back please")
    assert fell.status_code == 200, fell.text
    failed = chat_call(metrics, key, "metrics-down", "nothing can answer")
    assert failed.status_code >= 500, failed.text
    task_ids = [r.headers.get("x-switchyard-task-id") for r in (ok, over, fell)]
    with httpx.Client(base_url=metrics.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        with client.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "chat-default", "stream": True, "messages": [{"role": "user", "content": "a stream"}]},
        ) as stream:
            assert stream.status_code == 200
            assert "[DONE]" in "".join(stream.iter_text())

    def moved() -> bool:
        w = metrics.worker_metrics()
        return value(w, "switchyard_tasks_total") - value(work0, "switchyard_tasks_total") >= 5

    wait_until(moved, timeout=30, what="five tasks counted")
    w = metrics.worker_metrics()

    def grew(name: str, **labels: str) -> float:
        return value(w, name, **labels) - value(work0, name, **labels)

    assert grew("switchyard_tasks_total", type="chat", model="chat-default", status="succeeded") == 2
    assert grew("switchyard_tasks_total", type="chat", model="metrics-failover", status="succeeded") == 1
    assert grew("switchyard_tasks_total", type="chat", model="metrics-fallback", status="succeeded") == 1
    assert grew("switchyard_tasks_total", type="chat", model="metrics-down", status="failed") == 1
    # The failing deployment's attempts carry their error type; the successes `none`.
    assert grew("switchyard_attempts_total", provider="fake-b", error_type="none") == 0
    assert grew("switchyard_attempts_total", provider="fake-b") >= 4
    assert grew("switchyard_attempts_total", provider="fake", error_type="none") == 4
    assert grew("switchyard_attempt_duration_seconds_count", provider="fake") == 4
    assert grew("switchyard_fallbacks_total", from_model="metrics-fallback", to_model="chat-default") == 1
    assert grew("switchyard_tokens_total", model="chat-default", direction="input") > 0
    assert grew("switchyard_tokens_total", model="chat-default", direction="output") > 0
    assert grew("switchyard_cost_usd_total", model="metrics-failover") > 0
    assert grew("switchyard_time_to_first_token_seconds_count", model="chat-default") == 1
    assert value(w, "switchyard_calls_in_flight") == 0
    assert ("switchyard_calls_in_flight", (("lane", "interactive"),)) in w

    # The duties and the relay ran in whichever worker leads them.
    wait_until(lambda: value(metrics.worker_metrics(), "switchyard_relay_events_total") > 0, timeout=15, what="relay")
    w = metrics.worker_metrics()
    assert value(w, "switchyard_duty_runs_total", duty="tasks", outcome="ok") > 0
    assert value(w, "switchyard_duty_last_run_timestamp_seconds", duty="tasks") > 0
    assert ("switchyard_relay_lag_seconds", ()) in w

    a = metrics.api_metrics()
    # Each synchronous call that answered measured the gateway's overhead (the stream does not).
    assert (
        value(a, "switchyard_gateway_overhead_seconds_count", type="chat")
        - value(api0, "switchyard_gateway_overhead_seconds_count", type="chat")
        == 3
    )
    assert (
        value(a, "switchyard_http_requests_total", route="/v1/chat/completions", status="200")
        - value(api0, "switchyard_http_requests_total", route="/v1/chat/completions", status="200")
        == 4
    )
    # The shared state: queues (nothing waits now), deployments, the webhook backlog.
    assert value(a, "switchyard_state_up") == 1
    assert value(a, "switchyard_queue_depth", status="queued") == 0
    assert value(a, "switchyard_deployment_breaker_state", provider="fake", state="closed") >= 1
    assert ("switchyard_webhook_backlog", (("status", "pending"),)) in a

    # No task id anywhere in either text.
    texts = httpx.get(f"{metrics.url}/metrics").text + "".join(
        httpx.get(f"http://127.0.0.1:{p}/metrics").text for p in (metrics.control_port, metrics.provider_port)
    )
    for task_id in task_ids:
        assert task_id
        assert task_id not in texts
    assert not re.search(r'="task_[A-Za-z0-9]', texts)


def test_queue_age_shows_a_task_no_worker_takes(metrics: Metrics, key: str) -> None:
    # An ML task: no worker here consumes the ml queue, so it waits.
    response = httpx.post(
        f"{metrics.url}/v1/tasks",
        headers={"Authorization": f"Bearer {key}"},
        json={"type": "predict", "model": "risk-kserve", "input": {"inputs": {"x": 1}}},
        timeout=10,
    )
    assert response.status_code in (200, 201, 202), response.text

    def waiting() -> bool:
        a = metrics.api_metrics()
        return value(a, "switchyard_queue_depth", queue="ml", status="queued") == 1 and (
            value(a, "switchyard_queue_oldest_age_seconds", queue="ml") > 0
        )

    # The state is cached for SWITCHYARD_METRICS_STATE_CACHE_S (5 s).
    wait_until(waiting, timeout=20, what="a queued ml task in the metrics")


def test_metrics_off_serves_nothing(metrics: Metrics) -> None:
    port = free_port()
    api = metrics.stack.start("api-off", cli("api", "--port", str(port)), env={"SWITCHYARD_METRICS": "false"})
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", api)
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 404
    finally:
        api.stop()
