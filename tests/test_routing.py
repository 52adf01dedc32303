"""Routing through the real stack, with two fake provider servers and two provider worker processes:
strategies, circuit breakers shared through Redis (open, skipped by another worker, half-open recovery),
fallbacks (after failures, for long prompts, for content-policy refusals), rpm limits across workers, and
GET /v1/providers."""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support import Stack, chat, wait_task, wait_until

MODELS = """
  route-weighted:
    type: chat
    strategy: weighted
    deployments:
      - {provider: fake, model: gpt-w-a, weight: 3}
      - {provider: fake-b, model: gpt-w-b, weight: 1}
  route-rr:
    type: chat
    strategy: round_robin
    deployments:
      - {provider: fake, model: gpt-rr-a}
      - {provider: fake-b, model: gpt-rr-b}
  route-breaker:
    type: chat
    breaker: {window_s: 60, min_requests: 4, failure_rate: 0.5, cooldown_s: 15}
    deployments:
      - {provider: fake-b, model: gpt-brk-b}
      - {provider: fake, model: gpt-brk-a}
  route-rpm:
    type: chat
    deployments:
      - {provider: fake, model: gpt-rpm, rpm: 5}
  route-primary:
    type: chat
    deployments:
      - {provider: fake-b, model: gpt-primary}
    fallbacks: [route-backup]
  route-backup:
    type: chat
    deployments:
      - {provider: fake, model: gpt-backup}
  route-small:
    type: chat
    deployments:
      - {provider: fake, model: gpt-small, max_input_tokens: 30}
    context_window_fallbacks: [route-large]
    content_policy_fallbacks: [route-lenient]
  route-large:
    type: chat
    deployments:
      - {provider: fake-b, model: gpt-large}
  route-lenient:
    type: chat
    deployments:
      - {provider: fake-b, model: gpt-lenient}
  route-latency:
    type: chat
    strategy: least_latency
    deployments:
      - {provider: fake, model: gpt-lat-a}
      - {provider: fake-b, model: gpt-lat-b}
  route-busy:
    type: chat
    strategy: least_busy
    deployments:
      - {provider: fake, model: gpt-busy-a}
      - {provider: fake-b, model: gpt-busy-b}
  route-tpm:
    type: chat
    deployments:
      - {provider: fake, model: gpt-tpm, tpm: 20}
      - {provider: fake-b, model: gpt-tpm-spill}
  route-cheap:
    type: chat
    strategy: lowest_cost
    deployments:
      - {provider: fake, model: gpt-dear, price: {input: 10.0, output: 30.0}}
      - {provider: fake-b, model: gpt-cheap, price: {input: 1.0, output: 2.0}}
"""


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(
        tmp_path_factory.mktemp("routing"),
        redis_db=12,
        ml=False,
        second_fake=True,
        extra_models=MODELS,
        provider_workers=2,
    )
    yield s
    s.close()


@pytest.fixture(scope="module")
def api(routes: Stack) -> Iterator[httpx.Client]:
    with routes.client(routes.new_key("routing", "admin")) as c:
        yield c


def submit(api: httpx.Client, model: str, text: str, **options: Any) -> str:
    body: dict[str, Any] = {"type": "chat", "model": model, "input": chat(text)}
    if options:
        body["options"] = options
    response = api.post("/v1/tasks", json=body)
    assert response.status_code == 202, response.text
    task_id: str = response.json()["id"]
    return task_id


def finished(api: httpx.Client, task_ids: list[str], timeout: float = 60) -> list[dict[str, Any]]:
    return [wait_task(api, t, timeout=timeout) for t in task_ids]


def control(url: str, **settings: Any) -> None:
    assert httpx.post(f"{url}/control", json=settings).status_code == 200


def provider_status(api: httpx.Client, deployment: str) -> dict[str, Any]:
    status: dict[str, Any] = next(d for d in api.get("/v1/providers").json()["data"] if d["deployment"] == deployment)
    return status


def test_weighted_routing_follows_the_weights(api: httpx.Client) -> None:
    n = 300
    tasks = finished(api, [submit(api, "route-weighted", f"weighted {i} {secrets.token_hex(3)}") for i in range(n)])
    assert all(t["status"] == "succeeded" for t in tasks)
    served = Counter(t["attempts"][0]["provider_model"] for t in tasks)
    # 3:1 over 300 requests: 225 expected on A, standard deviation 7.5; allow four of them.
    assert abs(served["gpt-w-a"] - 225) <= 30, served
    assert served["gpt-w-a"] + served["gpt-w-b"] == n


def test_round_robin_alternates_across_workers(api: httpx.Client) -> None:
    tasks = finished(api, [submit(api, "route-rr", f"rr {i} {secrets.token_hex(3)}") for i in range(20)])
    served = Counter(t["attempts"][0]["provider_model"] for t in tasks)
    # One counter in Redis for both worker processes: exactly every other call.
    assert served == {"gpt-rr-a": 10, "gpt-rr-b": 10}


def test_breaker_opens_is_shared_by_another_worker_and_recovers(routes: Stack, api: httpx.Client) -> None:
    assert routes.more_providers, "this test needs two provider worker processes"
    second = routes.more_providers[0]
    second.stop()  # phase 1: one worker process sees the failures
    control(routes.fake_b_url, fail_rate=1.0, fail_status=503)
    try:
        # One after the other, so that each sees what the ones before did to the breaker.
        first_wave = [wait_task(api, submit(api, "route-breaker", f"brk {i} {secrets.token_hex(3)}")) for i in range(8)]
        assert all(t["status"] == "succeeded" for t in first_wave)
        assert all(t["attempts"][-1]["provider_model"] == "gpt-brk-a" for t in first_wave)  # failed over
        on_b = [[a["provider_model"] for a in t["attempts"]].count("gpt-brk-b") for t in first_wave]
        assert on_b == [1, 1, 1, 1, 0, 0, 0, 0], "four failures open the breaker; later tasks skip B"
        assert provider_status(api, "fake-b/gpt-brk-b")["breaker"]["state"] in ("open", "half_open")

        # Phase 2: another worker process, which never saw a failure, skips B too.
        assert routes.provider is not None
        replacement = routes.start_worker("provider")
        routes.provider.kill()  # at once: the whole phase must fit in the breaker's cooldown
        routes.provider = replacement
        second_wave = finished(
            api, [submit(api, "route-breaker", f"brk2 {i} {secrets.token_hex(3)}") for i in range(6)]
        )
        routed = [[a["provider_model"] for a in t["attempts"]] for t in second_wave]
        assert routed == [["gpt-brk-a"]] * 6, routed
        assert provider_status(api, "fake-b/gpt-brk-b")["breaker"]["state"] in ("open", "half_open")
    finally:
        control(routes.fake_b_url, fail_rate=0.0)

    # Half-open: once the cooldown has passed, one probe goes to B; its success closes the breaker.
    wait_until(
        lambda: provider_status(api, "fake-b/gpt-brk-b")["breaker"]["state"] == "half_open", timeout=30, what="cooldown"
    )
    probe = wait_task(api, submit(api, "route-breaker", f"probe {secrets.token_hex(3)}"))
    assert [a["provider_model"] for a in probe["attempts"]] == ["gpt-brk-b"]
    assert provider_status(api, "fake-b/gpt-brk-b")["breaker"]["state"] == "closed"
    after = finished(api, [submit(api, "route-breaker", f"after {i} {secrets.token_hex(3)}") for i in range(3)])
    assert all([a["provider_model"] for a in t["attempts"]] == ["gpt-brk-b"] for t in after)
    routes.more_providers[0] = routes.start_worker("provider")


def test_fallback_model_after_every_deployment_failed(api: httpx.Client) -> None:
    task = wait_task(api, submit(api, "route-primary", f"fall back [[fail:503@gpt-primary]] {secrets.token_hex(3)}"))
    assert task["status"] == "succeeded", task
    assert [(a["model"], a["provider_model"], a["status"]) for a in task["attempts"]] == [
        ("route-primary", "gpt-primary", "failed"),
        ("route-backup", "gpt-backup", "succeeded"),
    ]
    assert task["result"]["model"] == "route-backup"
    assert task["model"] == "route-primary"


def test_prompt_too_long_goes_to_the_context_window_fallback(api: httpx.Client) -> None:
    long_text = "word " * 60  # about 75 tokens: more than gpt-small's 30
    task = wait_task(api, submit(api, "route-small", long_text))
    assert task["status"] == "succeeded", task
    assert [a["provider_model"] for a in task["attempts"]] == ["gpt-large"]


def test_context_length_error_goes_to_the_context_window_fallback(api: httpx.Client) -> None:
    task = wait_task(api, submit(api, "route-small", f"short [[context@gpt-small]] {secrets.token_hex(2)}"))
    assert task["status"] == "succeeded", task
    assert [(a["provider_model"], a["error"] and a["error"]["type"]) for a in task["attempts"]] == [
        ("gpt-small", "context_length_exceeded"),
        ("gpt-large", None),
    ]


def test_content_policy_refusal_goes_to_the_content_policy_fallback(api: httpx.Client) -> None:
    task = wait_task(api, submit(api, "route-small", f"edgy [[policy@gpt-small]] {secrets.token_hex(2)}"))
    assert task["status"] == "succeeded", task
    assert [(a["provider_model"], a["error"] and a["error"]["type"]) for a in task["attempts"]] == [
        ("gpt-small", "content_blocked"),
        ("gpt-lenient", None),
    ]
    # Without such a fallback the refusal fails the task at once.
    plain = wait_task(api, submit(api, "route-backup", f"edgy [[policy]] {secrets.token_hex(2)}"))
    assert plain["status"] == "failed"
    assert plain["error"]["type"] == "content_blocked"
    assert len(plain["attempts"]) == 1


def test_rpm_limit_holds_across_two_worker_processes(routes: Stack, api: httpx.Client) -> None:
    assert routes.more_providers, "this test needs two provider worker processes"
    ids = [submit(api, "route-rpm", f"rpm {i} {secrets.token_hex(3)}") for i in range(12)]
    wait_until(lambda: sum(api.get(f"/v1/tasks/{t}").json()["status"] == "succeeded" for t in ids) >= 5, timeout=30)
    time.sleep(3)  # both workers had every chance to go past the limit
    statuses = Counter(api.get(f"/v1/tasks/{t}").json()["status"] for t in ids)
    assert statuses == {"succeeded": 5, "queued": 7}, statuses
    served = routes.sql("SELECT count(*) FROM attempts WHERE provider_model = 'gpt-rpm'")[0][0]
    assert served == 5
    waiting = routes.sql(
        "SELECT count(*) FROM tasks WHERE model = 'route-rpm' AND status = 'queued' AND due_at > now()"
    )[0][0]
    assert waiting == 7  # handed back with a due time, not held by a sleeping worker
    assert provider_status(api, "fake/gpt-rpm")["rpm_remaining"] == 0


def test_least_latency_prefers_the_faster_deployment(api: httpx.Client) -> None:
    served: Counter[str] = Counter()
    for i in range(16):
        task = wait_task(api, submit(api, "route-latency", f"lat {i} [[sleep:300@gpt-lat-b]] {secrets.token_hex(2)}"))
        served[task["attempts"][0]["provider_model"]] += 1
    assert served["gpt-lat-b"] <= 2, served  # tried to learn its latency, then avoided
    latency = provider_status(api, "fake-b/gpt-lat-b")["latency_ms"]
    assert latency["p50"] >= 300


def test_least_busy_spreads_concurrent_calls(api: httpx.Client) -> None:
    ids = [submit(api, "route-busy", f"busy {i} [[sleep:1500]] {secrets.token_hex(2)}") for i in range(10)]
    served = Counter(t["attempts"][0]["provider_model"] for t in finished(api, ids))
    assert min(served["gpt-busy-a"], served["gpt-busy-b"]) >= 3, served


def test_lowest_cost_picks_the_cheaper_deployment(api: httpx.Client) -> None:
    tasks = finished(api, [submit(api, "route-cheap", f"cheap {i} {secrets.token_hex(2)}") for i in range(5)])
    assert {t["attempts"][0]["provider_model"] for t in tasks} == {"gpt-cheap"}


def test_pinning_bypasses_the_strategy(api: httpx.Client) -> None:
    tasks = finished(api, [submit(api, "route-cheap", f"pinned {i}", provider="fake") for i in range(3)])
    assert {t["attempts"][0]["provider_model"] for t in tasks} == {"gpt-dear"}
    header = api.post(
        "/v1/tasks", json={"type": "chat", "model": "route-cheap", "input": chat("hdr")}, headers={"X-Provider": "fake"}
    )
    assert wait_task(api, header.json()["id"])["attempts"][0]["provider_model"] == "gpt-dear"


def test_providers_endpoint_reports_each_deployment(api: httpx.Client) -> None:
    wait_task(api, submit(api, "route-backup", f"status {secrets.token_hex(2)}"))
    data = api.get("/v1/providers").json()["data"]
    backup = next(d for d in data if d["deployment"] == "fake/gpt-backup")
    assert backup["models"] == ["route-backup"]
    assert backup["breaker"]["state"] == "closed"
    assert backup["success_rate"] == 1.0
    assert backup["latency_ms"]["p50"] is not None
    assert backup["latency_ms"]["p95"] >= backup["latency_ms"]["p50"]
    assert backup["in_flight"] == 0
    assert {d["deployment"] for d in data} >= {"fake/gpt-w-a", "fake-b/gpt-w-b", "fake/gpt-rpm"}


def test_tpm_limit_skips_a_deployment_that_used_its_tokens(api: httpx.Client) -> None:
    # About 7 prompt and 9 reply tokens a call: the first fits gpt-tpm's 20 a minute, the next does not.
    text = f"tokens {secrets.token_hex(4)} pad pad pad"
    first = wait_task(api, submit(api, "route-tpm", text))
    second = wait_task(api, submit(api, "route-tpm", text))
    assert first["attempts"][0]["provider_model"] == "gpt-tpm"
    assert first["usage"]["input_tokens"] + first["usage"]["output_tokens"] > 15
    assert [a["provider_model"] for a in second["attempts"]] == ["gpt-tpm-spill"]
    assert provider_status(api, "fake/gpt-tpm")["tpm_remaining"] < 7
