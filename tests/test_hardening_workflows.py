"""Issue 17's workflow findings (and issue 15 item 7), each reproduction as a test: templates render under a
budget (iterations, characters, time) and outside the run's row lock; definitions are parsed off the event loop
with YAML aliases refused and size limits; `for_each` has an item cap and a default `max_parallel`; data keys win
over dict methods; validation messages name a step by its id."""

from __future__ import annotations

import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from switchyard.core.config import load_config
from switchyard.core.db import Database
from switchyard.core.errors import InvalidRequest
from switchyard.core.models import Task
from switchyard.settings import Settings
from switchyard.workers.celery_app import make_celery
from switchyard.workers.dispatch import CeleryDispatcher
from switchyard.workers.queues import ADVANCE_RUN, EXECUTE_TASK
from switchyard.workflows.budget import Budget
from switchyard.workflows.definition_limits import MAX_DEPTH, load_yaml
from switchyard.workflows.engine import Engine
from switchyard.workflows.runner import advance_with_retry
from switchyard.workflows.spec import WorkflowSpec
from switchyard.workflows.templates import TemplateError, render_value
from switchyard.workflows.validation import ensure_valid
from tests.processes import ROOT
from tests.support import FINISHED, Stack, wait_status, wait_until

CONTEXT: dict[str, Any] = {"input": {"text": "hello"}, "steps": {}}
MODELS = {"gpt": "chat"}
HI = {"messages": [{"role": "user", "content": "hi"}]}


def over_budget(template: str, budget: Budget | None = None) -> str:
    """Render a template that must be refused; the error's message, after checking it came quickly."""
    started = time.monotonic()
    with pytest.raises(TemplateError) as caught:
        render_value(template, CONTEXT, *([budget] if budget else []))
    assert time.monotonic() - started < 3.0
    return caught.value.message


# --- templates under a budget -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "limit"),
    [
        ('{{ "a".ljust(30000000) }}', "SWITCHYARD_WORKFLOW_TEMPLATE_MAX_CHARS"),
        ('{{ "{:>30000000}".format(1) }}', "SWITCHYARD_WORKFLOW_TEMPLATE_MAX_CHARS"),
        ('x{{ "{:>{}}".format(1, 30000000) }}', "SWITCHYARD_WORKFLOW_TEMPLATE_MAX_CHARS"),
        ('{{ "%30000000s" % 1 }}', "SWITCHYARD_WORKFLOW_TEMPLATE_MAX_CHARS"),
        # nested replace: each level multiplies the length
        (
            '{{ ("a" * 1000).replace("a", "a" * 100).replace("a", "a" * 100).replace("a", "a" * 100) }}',
            "SWITCHYARD_WORKFLOW_TEMPLATE_MAX_CHARS",
        ),
        ('{{ ("a" * 100000) | replace("a", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa") }}', "MAX_CHARS"),
        ('{% set s = "a" * 1000000 %}{{ s ~ s ~ s }}', "SWITCHYARD_WORKFLOW_TEMPLATE_MAX_CHARS"),
        ('{{ (["a" * 1000000] * 1000) | join }}', "SWITCHYARD_WORKFLOW_TEMPLATE_MAX_CHARS"),
        ('{{ ["a" * 1000000] * 100 }}', "SWITCHYARD_WORKFLOW_TEMPLATE_MAX_CHARS"),
        ('{{ [1] | batch(30000000, "x") | list }}', "SWITCHYARD_WORKFLOW_TEMPLATE_MAX_ITERATIONS"),
        (
            "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
            "SWITCHYARD_WORKFLOW_TEMPLATE_MAX_ITERATIONS",
        ),
        ("{{ range(100000000) | list }}", "SWITCHYARD_WORKFLOW_TEMPLATE_MAX_ITERATIONS"),
    ],
)
def test_templates_that_build_huge_strings_or_loop_long_fail_naming_the_limit(template: str, limit: str) -> None:
    message = over_budget(template)
    assert "over its budget" in message
    assert limit in message


def test_three_nested_range_loops_stop_instead_of_running_forever() -> None:
    # In a process of its own: before the budget, this never finished.
    code = (
        "from switchyard.workflows.templates import render_value, TemplateError\n"
        "t = '{% for i in range(10000) %}{% for j in range(10000) %}{% for k in range(10000) %}"
        "{% endfor %}{% endfor %}{% endfor %}'\n"
        "try:\n    render_value(t, {'input': {}, 'steps': {}})\nexcept TemplateError as e:\n    print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert "SWITCHYARD_WORKFLOW_TEMPLATE_MAX_ITERATIONS" in done.stdout, done.stdout + done.stderr


def test_a_slow_template_stops_at_its_time_budget() -> None:
    context = {"input": {"words": [f"w{i}" for i in range(300)]}, "steps": {}}
    template = "{% for i in range(90000) %}{% set s = input.words | sort %}{% endfor %}"
    started = time.monotonic()
    with pytest.raises(TemplateError) as caught:
        render_value(template, context, Budget(timeout_s=0.2))
    assert "SWITCHYARD_WORKFLOW_TEMPLATE_TIMEOUT_S" in caught.value.message
    assert time.monotonic() - started < 1.5


def test_small_templates_render_as_before() -> None:
    context = {"input": {"n": [1, 2, 3], "text": "hi"}, "steps": {"a": {"output": {"content": "x"}}}}
    value = {
        "messages": [{"role": "user", "content": "{{ input.text }} {{ steps.a.output.content }} {{ input.n }}"}],
        "n": "{{ input.n | length }}",
        "loop": "{% for x in input.n %}{{ x }}{{ loop.length }},{% endfor %}",
        "concat": "{{ input.text ~ '!' }}",
        "fmt": "{{ '{:>5}'.format(input.text) }}",
    }
    assert render_value(value, context) == {
        "messages": [{"role": "user", "content": "hi x [1, 2, 3]"}],
        "n": 3,
        "loop": "13,23,33,",
        "concat": "hi!",
        "fmt": "   hi",
    }


# --- data keys win over dict methods; step ids in messages (issue 15, item 7) ------------------------------------


def test_data_keys_named_like_dict_methods_resolve_to_the_data() -> None:
    context = {"input": {"items": [1, 2], "keys": "k", "values": 3, "get": "g"}, "steps": {}}
    assert render_value("{{ input.items }}", context) == [1, 2]
    assert render_value("{{ input.items | length }}", context) == 2
    assert render_value("{{ input.keys }}-{{ input.values }}-{{ input.get }}", context) == "k-3-g"
    # Without such a key, the method is still there.
    assert render_value("{{ input.other.items() | list }}", {"input": {"other": {"a": 1}}}) == [["a", 1]]


def test_validation_messages_name_the_step_by_id_and_index() -> None:
    spec = WorkflowSpec.model_validate(
        {
            "name": "wf",
            "steps": [
                {"id": "first", "type": "chat", "model": "gpt", "input": HI},
                {"id": "summarize", "type": "chat", "model": "nope", "input": HI},
            ],
        }
    )
    with pytest.raises(InvalidRequest) as caught:
        ensure_valid(spec, MODELS)
    assert caught.value.param == "steps[1].model"
    assert "steps[1].model (step 'summarize'): unknown model 'nope'" in caught.value.message


# --- definitions: YAML aliases, size limits ---------------------------------------------------------------------


def alias_bomb(levels: int) -> str:
    """The billion laughs: each level refers to the one before nine times (about 360 bytes for 9 levels)."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines)


def bomb_definition(wf: str, levels: int) -> str:
    """A definition with the bomb in a step's input, where validation walks every string."""
    bomb = alias_bomb(levels).replace("\n", "\n        ")
    return (
        f"name: {wf}\nsteps:\n  - id: only\n    type: chat\n    model: chat-default\n"
        f"    input:\n      messages: [{{role: user, content: hi}}]\n      metadata:\n        {bomb}\n"
    )


def test_yaml_aliases_are_refused_before_expansion() -> None:
    started = time.monotonic()
    with pytest.raises(InvalidRequest) as caught:
        load_yaml(alias_bomb(9))
    assert time.monotonic() - started < 0.5
    assert "aliases" in caught.value.message
    assert caught.value.param == "body"
    assert load_yaml("a: &x 1\nb: 2") == {"a": 1, "b": 2}  # an anchor alone is harmless


def test_yaml_nesting_and_long_strings_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="nested more than"):
        load_yaml("a: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5))
    with pytest.raises(InvalidRequest, match="string longer than"):
        load_yaml("a: " + "x" * 200_000)


# --- Celery time limits -----------------------------------------------------------------------------------------


def test_celery_tasks_have_time_limits_that_match_their_leases() -> None:
    settings = Settings(default_timeout_s=60, lease_grace_s=30, requeue_after_s=60)
    limits = make_celery(settings).conf.task_annotations
    execute, advance = limits[EXECUTE_TASK], limits[ADVANCE_RUN]
    # A claim is over within its lease: past it, the sweeper hands the task to another worker anyway.
    assert execute["time_limit"] == 90
    assert execute["soft_time_limit"] < 90
    # An advance past requeue_after_s is advanced again by the runs' sweep.
    assert advance["soft_time_limit"] == 60
    assert advance["time_limit"] > 60


# --- through the real stack -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hard_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        # Room for the slow template of the cancel test; small caps to reach them cheaply.
        "SWITCHYARD_WORKFLOW_TEMPLATE_TIMEOUT_S": "20",
        "SWITCHYARD_WORKFLOW_MAX_ITEMS": "50",
        "SWITCHYARD_WORKFLOW_DEFAULT_MAX_PARALLEL": "3",
    }
    s = Stack(tmp_path_factory.mktemp("hardening-wf"), redis_db=5, ml=False, env=env)
    yield s
    s.close()


@pytest.fixture
def api(hard_stack: Stack) -> Iterator[httpx.Client]:
    with hard_stack.client(hard_stack.new_key(f"t-{secrets.token_hex(3)}", "admin")) as c:
        yield c


def name() -> str:
    return f"wf_{secrets.token_hex(4)}"


def chat_step(step_id: str, text: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": step_id,
        "type": "chat",
        "model": "chat-default",
        "input": {"messages": [{"role": "user", "content": text}]},
        **extra,
    }


def register(api: httpx.Client, spec: dict[str, Any]) -> None:
    response = api.post("/v1/workflows", json=spec)
    assert response.status_code == 201, response.text


def start(api: httpx.Client, wf: str, input: dict[str, Any] | None = None) -> str:
    response = api.post(f"/v1/workflows/{wf}/runs", json={"input": input or {}})
    assert response.status_code == 202, response.text
    run_id: str = response.json()["id"]
    return run_id


def finished(api: httpx.Client, run_id: str, timeout: float = 60) -> dict[str, Any]:
    return wait_status(api, f"/v1/runs/{run_id}", FINISHED, timeout)


def test_yaml_alias_bomb_answers_422_quickly_without_delaying_healthz(hard_stack: Stack, api: httpx.Client) -> None:
    wf = name()
    body = bomb_definition(wf, 6)
    answer: dict[str, Any] = {}

    def post() -> None:
        started = time.monotonic()
        response = api.post("/v1/workflows", content=body, headers={"Content-Type": "application/yaml"})
        answer.update(status=response.status_code, body=response.json(), took=time.monotonic() - started)

    poster = threading.Thread(target=post)
    poster.start()
    worst = 0.0
    with httpx.Client(base_url=hard_stack.url, timeout=30) as probe:
        while poster.is_alive():
            started = time.monotonic()
            assert probe.get("/healthz").status_code == 200
            worst = max(worst, time.monotonic() - started)
            time.sleep(0.01)
    poster.join()
    assert answer["status"] == 422, answer
    assert "aliases" in answer["body"]["error"]["message"]
    assert answer["took"] < 2.0, answer
    assert worst < 1.0, worst
    assert api.get(f"/v1/workflows/{wf}").status_code == 404  # nothing stored, expanded or not


def test_deep_or_template_heavy_json_definitions_are_422(api: httpx.Client) -> None:
    deep: Any = "x"
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    step = chat_step("a", "hi")
    step["input"]["metadata"] = deep
    response = api.post("/v1/workflows", json={"name": name(), "steps": [step]})
    assert response.status_code == 422, response.text
    assert "nested more than" in response.json()["error"]["message"]

    heavy = chat_step("a", "{{ input.x }}" * 2500)
    response = api.post("/v1/workflows", json={"name": name(), "steps": [heavy]})
    assert response.status_code == 422, response.text
    assert "template tags" in response.json()["error"]["message"]


def test_registration_messages_name_the_step_by_id(api: httpx.Client) -> None:
    bad_model = {**chat_step("summarize", "x"), "model": "no-such-model"}
    response = api.post("/v1/workflows", json={"name": name(), "steps": [chat_step("a", "x"), bad_model]})
    assert response.status_code == 422
    assert "steps[1].model (step 'summarize')" in response.json()["error"]["message"]
    bad_retries = {**chat_step("fetch", "x"), "retries": 99}
    response = api.post("/v1/workflows", json={"name": name(), "steps": [bad_retries]})
    assert response.status_code == 422
    assert "steps[0].retries (step 'fetch')" in response.json()["error"]["message"]


def test_a_template_over_budget_fails_the_step_clearly(api: httpx.Client) -> None:
    wf = name()
    register(api, {"name": wf, "steps": [chat_step("big", '{{ "a".ljust(30000000) }}')]})
    result = finished(api, start(api, wf))
    assert result["status"] == "failed", result
    error = result["steps"]["big"]["error"]
    assert error["type"] == "template_error"
    assert "SWITCHYARD_WORKFLOW_TEMPLATE_MAX_CHARS" in error["message"]
    assert result["steps"]["big"]["task_ids"] == []


def test_for_each_over_the_item_cap_fails_the_step(api: httpx.Client) -> None:
    wf = name()
    register(api, {"name": wf, "steps": [chat_step("fan", "{{ item }}", for_each="{{ range(100000)|list * 10 }}")]})
    result = finished(api, start(api, wf))
    assert result["status"] == "failed", result
    assert "over its budget" in result["steps"]["fan"]["error"]["message"]
    assert result["steps"]["fan"]["task_ids"] == []

    wf = name()
    register(api, {"name": wf, "steps": [chat_step("fan", "{{ item }}", for_each="{{ input.n }}")]})
    result = finished(api, start(api, wf, {"n": list(range(51))}))
    assert result["status"] == "failed", result
    message = result["steps"]["fan"]["error"]["message"]
    assert "for_each gave 51 items; a step takes at most 50 (SWITCHYARD_WORKFLOW_MAX_ITEMS)" in message
    assert result["steps"]["fan"]["task_ids"] == []


def test_for_each_without_max_parallel_runs_the_default_at_once(hard_stack: Stack, api: httpx.Client) -> None:
    wf = name()
    register(api, {"name": wf, "steps": [chat_step("fan", "{{ item }} [[sleep:300]]", for_each="{{ input.items }}")]})
    run_id = start(api, wf, {"items": list(range(12))})  # `input.items`: the data, not dict.items
    peak = 0
    while True:
        (row,) = hard_stack.sql(
            "SELECT count(*) FILTER (WHERE status NOT IN ('succeeded', 'failed', 'canceled')) FROM tasks "
            "WHERE run_id = %s",
            run_id,
        )
        peak = max(peak, row[0])
        status = api.get(f"/v1/runs/{run_id}").json()["status"]
        if status in FINISHED:
            break
        time.sleep(0.05)
    result = finished(api, run_id)
    assert result["status"] == "succeeded", result
    assert [o["content"] for o in result["steps"]["fan"]["output"]] == [f"echo: {i} [[sleep:300]]" for i in range(12)]
    assert 1 <= peak <= 3, peak


def test_a_cancel_does_not_wait_for_a_template_to_render(api: httpx.Client) -> None:
    # Step `slow` has a `when` that takes seconds to render; the advance that renders it starts as `first` ends.
    wf = name()
    slow_when = "{% for i in range(4000) %}{% set s = input.words | sort %}{% endfor %}yes"
    register(
        api,
        {
            "name": wf,
            "steps": [
                chat_step("first", "go [[sleep:500]]"),
                chat_step("slow", "{{ steps.first.output.content }}", when=slow_when),
            ],
        },
    )
    run_id = start(api, wf, {"words": [f"w{i}" for i in range(300)]})
    # The task's own status (the run's view of the step changes only once the advance has committed).
    wait_until(lambda: bool(api.get(f"/v1/runs/{run_id}").json()["steps"]["first"]["task_ids"]), timeout=30)
    first_task = api.get(f"/v1/runs/{run_id}").json()["steps"]["first"]["task_ids"][0]
    wait_until(lambda: api.get(f"/v1/tasks/{first_task}").json()["status"] == "succeeded", timeout=30, interval=0.02)
    time.sleep(0.2)  # the advance is rendering now
    started = time.monotonic()
    canceled = api.post(f"/v1/runs/{run_id}/cancel")
    took = time.monotonic() - started
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["status"] == "canceled"
    assert took < 1.0, took
    time.sleep(1)
    result = api.get(f"/v1/runs/{run_id}").json()
    assert result["status"] == "canceled"
    assert result["steps"]["slow"]["task_ids"] == []


def test_an_advance_loads_no_task_of_a_finished_step(hard_stack: Stack, api: httpx.Client) -> None:
    # `fan` has finished (40 tasks) and `after` is running: advancing the run again, in this process against the
    # stack's database, needs none of their rows (before, every advance loaded every task of the run).
    wf = name()
    register(
        api,
        {
            "name": wf,
            "steps": [
                chat_step("fan", "n {{ item }}", for_each="{{ input.n }}", max_parallel=40),
                chat_step("after", "{{ steps.fan.output | length }} [[sleep:8000]]"),
            ],
        },
    )
    run_id = start(api, wf, {"n": list(range(40))})

    def after_started() -> bool:
        view = api.get(f"/v1/runs/{run_id}").json()
        assert view["status"] not in FINISHED, view
        return view["steps"]["fan"]["status"] == "succeeded" and bool(view["steps"]["after"]["task_ids"])

    wait_until(after_started, timeout=90)

    settings = Settings(database_url=hard_stack.database_url, redis_url=hard_stack.redis_url)
    db = Database(settings, pool_size=1)
    engine = Engine(load_config(hard_stack.tmp / "switchyard.yaml"), CeleryDispatcher(make_celery(settings)))
    loaded: list[str] = []

    def on_load(task: Task, _: Any) -> None:
        loaded.append(task.id)

    event.listen(Task, "load", on_load)
    try:
        advance_with_retry(db, engine, run_id)
    finally:
        event.remove(Task, "load", on_load)
        db.dispose()
    assert loaded == []
    result = finished(api, run_id)
    assert result["status"] == "succeeded", result
    assert len(result["steps"]["fan"]["output"]) == 40
