"""The scripts of examples/ and the Python snippets of README.md's "Using it", run against a live stack, so
that neither can drift from the code.

The stack is this module's own: the examples need what the shared one has not got — the shipped workflows
(switchyard/defaults/workflows/, loaded at start-up) with the `anomaly-detector` model they
use, and `SWITCHYARD_WEBHOOK_ALLOW_PRIVATE` for the webhook receiver on 127.0.0.1. The shared stack, which
runs without that setting, shows the receiver's message when its registration is refused."""

from __future__ import annotations

import ast
import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from switchyard.defaults import DEFAULT_CONFIG, DEFAULT_WORKFLOWS, MODELS_DIR
from tests.support import ROOT, Stack

EXAMPLES = ROOT / "examples"

# Every example, with what it must print when it ends well. A new example needs an entry here.
EXPECTED: dict[str, list[str]] = {
    "submit_and_poll.py": [
        "the same Idempotency-Key again gave",
        "(chat on chat-default): succeeded",
        "answer: 'echo: Hello from examples/submit_and_poll.py'",
        "(embed on embed-default): succeeded",
        "2 vectors of 64 dimensions",
        "attempt 1: fake/gpt-4o-mini succeeded",
    ],
    "websocket.py": [
        "(since 0)",
        "task.queued",
        "task.started",
        "task.delta",
        "task.succeeded",
        "deltas streamed; together they are the answer: True",
    ],
    "sse.py": [
        "first connection:",
        "reconnected with Last-Event-ID:",
        "task.succeeded",
        "increasing, no duplicate: True",
        "answer: 'echo: Hello, SSE'",
    ],
    "webhook_receiver.py": [
        "/subscription  task.succeeded",
        "/task-hook     task.succeeded",
        "signature verified",
        "deleted wh_",
        "succeeded: {",
    ],
    "openai_sdk.py": [
        "chat: 'echo: Hi from the openai SDK'",
        "usage: ",
        "decoded equal to the floats: True",
        "flagged=True ['harassment']",
        "risk-classifier (predict)",
    ],
    "predict_csv.py": [
        "features: float32 [None, 8]",
        "6 rows of rows.csv in one call",
        "-> low",
        "-> medium",
        "-> high",
        "same labels: True",
    ],
    "batch.py": [
        "uploaded file_",
        "question-0: 'echo: What is a batch job?'",
        "question-3 failed (400)",
        "completed: 3 lines",
    ],
    "workflows.py": [
        "risk_analysis v",
        "scenario_generation v",
        "output.risk_class = 2",
        "output.forecast_musd = [",
        "shape_inspection v",
        'output.shape = "triangle"',
    ],
}

# The packaged workflows' models beyond the test config's (make dev serves them from the packaged config).
ANOMALY_DETECTOR = f"""
  anomaly-detector:
    type: predict
    deployments:
      - {{provider: onnx, model: "{MODELS_DIR / "anomaly_detector.onnx"}", price: {{per_1k_predictions: 0.01}}}}
  shape-classifier:
    type: predict
    labels: [circle, square, triangle]
    image: {{input: image, size: [28, 28], mode: L, scale: 0.00392156862745098, mean: [0.5], std: [0.5]}}
    deployments:
      - {{provider: onnx, model: "{MODELS_DIR / "shape_classifier.onnx"}", price: {{per_1k_predictions: 0.02}}}}
"""


@pytest.fixture(scope="module")
def examples_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("examples")
    env = {"SWITCHYARD_WEBHOOK_ALLOW_PRIVATE": "true", "SWITCHYARD_WORKFLOWS_DIR": str(DEFAULT_WORKFLOWS)}
    s = Stack(tmp, redis_db=14, env=env, extra_models=ANOMALY_DETECTOR)
    yield s
    s.close()


@pytest.fixture(scope="module")
def key(examples_stack: Stack) -> str:
    # An admin key, like the one `make dev` prints (webhooks need one), of a tenant of its own.
    return examples_stack.new_key(f"examples-{secrets.token_hex(3)}", "admin")


def run_script(path: Path, url: str, key: str | None, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a script as a user would: a shell without Switchyard's settings but the URL and the key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    env["SWITCHYARD_URL"] = url
    if key is not None:
        env["SWITCHYARD_API_KEY"] = key
    return subprocess.run(
        [sys.executable, str(path), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240
    )


def describe(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs_against_a_live_stack(name: str, examples_stack: Stack, key: str, tmp_path: Path) -> None:
    # From another directory: an example finds its own files (rows.csv, workflows/) next to itself.
    done = run_script(EXAMPLES / name, examples_stack.url, key, cwd=tmp_path)
    assert done.returncode == 0, describe(done)
    for expected in EXPECTED[name]:
        assert expected in done.stdout, f"{expected!r} not printed\n{describe(done)}"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.py")), ids=lambda p: p.name)
def test_every_example_is_run_and_documented(path: Path) -> None:
    assert path.name in EXPECTED, f"{path.name} is not run by tests/test_examples.py: add it to EXPECTED"
    docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert "make dev" in docstring, f"{path.name}'s docstring does not say to start the service"
    assert f"SWITCHYARD_API_KEY=sy_... python examples/{path.name}" in docstring, path.name
    assert f"`{path.name}" in (EXAMPLES / "README.md").read_text(), f"examples/README.md does not list {path.name}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_without_a_key_says_so(name: str, tmp_path: Path) -> None:
    done = run_script(EXAMPLES / name, "http://127.0.0.1:9", None, cwd=tmp_path)
    assert done.returncode != 0
    assert done.stdout == ""
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "SWITCHYARD_API_KEY is not set" in done.stderr


def test_webhook_receiver_explains_a_refused_registration(stack: Stack, tmp_path: Path) -> None:
    # The shared stack runs with SWITCHYARD_WEBHOOK_ALLOW_PRIVATE unset: 127.0.0.1 is refused.
    key = stack.new_key(f"examples-private-{secrets.token_hex(3)}", "admin")
    done = run_script(EXAMPLES / "webhook_receiver.py", stack.url, key, cwd=tmp_path)
    assert done.returncode != 0, describe(done)
    assert "POST /v1/webhooks answered 422" in done.stderr, describe(done)
    assert "restart it with SWITCHYARD_WEBHOOK_ALLOW_PRIVATE=true" in done.stderr, describe(done)


def test_examples_name_what_make_dev_serves() -> None:
    # The stack above runs the tests' config; `make dev` runs the packaged one, which must have them too.
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    sources = "\n".join(path.read_text() for path in EXAMPLES.glob("*.py"))
    # `model="chat-default"`, `"model": "embed-default"`, `MODEL = "risk-classifier"`.
    named = set(re.findall(r"model['\"]?\s*[:=]\s*\"([\w.-]+)\"", sources, re.I))
    assert {"chat-default", "embed-default", "risk-classifier"} <= named
    assert named <= set(config["models"]), named - set(config["models"])
    # openai_sdk.py's moderation names no model: the config's first moderation model answers.
    assert any(model["type"] == "moderate" for model in config["models"].values())
    # One input file per shipped workflow, and none for a workflow that is not shipped.
    shipped = {path.stem for path in DEFAULT_WORKFLOWS.glob("*.yaml")}
    assert shipped == {path.stem for path in (EXAMPLES / "workflows").glob("*.json")}
    assert shipped == {yaml.safe_load(p.read_text())["name"] for p in DEFAULT_WORKFLOWS.glob("*.yaml")}


# --- README.md --------------------------------------------------------------------------------------------------


def using_it() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("\n## Using it\n", 1)[1].split("\n## ", 1)[0]


def python_snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", using_it(), re.S)


# The WebSocket snippet defines `follow` and does not call it; its loop never ends by itself. Called here on a
# task that is already finished, it prints the replayed events, then waits for more until the timeout.
FOLLOW = """
import httpx as _httpx
_api = _httpx.Client(base_url=BASE, headers={"Authorization": f"Bearer {KEY}"})
_task = _api.post("/v1/tasks", json={"type": "chat", "model": "chat-default",
                  "input": {"messages": [{"role": "user", "content": "readme"}]}}).json()["id"]
while _api.get(f"/v1/tasks/{_task}").json()["status"] != "succeeded":
    time.sleep(0.1)
try:
    asyncio.run(asyncio.wait_for(follow(_task), 5))
except TimeoutError:
    pass
"""


def test_readme_python_snippets_run(examples_stack: Stack, key: str, tmp_path: Path) -> None:
    snippets = python_snippets()
    assert len(snippets) == 4, "a new Python snippet in README.md's 'Using it': check that it runs here"
    outputs = []
    for i, snippet in enumerate(snippets):
        ws_url = examples_stack.url.replace("http://", "ws://")
        code = snippet.replace("http://127.0.0.1:8000", examples_stack.url).replace("ws://127.0.0.1:8000", ws_url)
        prelude = f"import asyncio, os, time\nKEY = os.environ['SWITCHYARD_API_KEY']\nBASE = {examples_stack.url!r}\n"
        script = tmp_path / f"snippet_{i}.py"
        script.write_text(prelude + code + (FOLLOW if "async def follow" in code else ""))
        done = run_script(script, examples_stack.url, key, cwd=tmp_path)
        assert done.returncode == 0, f"README.md's Python snippet {i + 1}:\n{snippet}\n{describe(done)}"
        outputs.append(done.stdout)
    embed, sdk, batch, follow = outputs
    assert re.match(r"succeeded 2 \d", embed), embed
    assert "echo: \nHi\n" in sdk, sdk  # the streamed chunks ...
    assert "CompletionUsage(" in sdk, sdk  # ... then the usage
    assert batch.startswith("completed BatchRequestCounts(completed=2, failed=0, total=2)"), batch
    lines = [json.loads(line) for line in batch.splitlines()[1:] if line.strip()]
    assert [line["custom_id"] for line in lines] == ["q0", "q1"], batch
    assert lines[0]["response"]["body"]["choices"][0]["message"]["content"] == "echo: Hello", batch
    assert "'type': 'subscribed'" in follow, follow
    assert "'type': 'task.succeeded'" in follow, follow


def test_readme_files_resolve() -> None:
    # `curl ... --data-binary @examples/rows.csv` and the like: every file the section names is in the repo.
    section = using_it()
    files = re.findall(r"@([\w./-]+\.\w+)", section) + re.findall(r"`((?:examples|config|models)/[\w./-]+)`", section)
    assert "examples/rows.csv" in files
    for name in files:
        assert (ROOT / name).exists(), f"README.md's 'Using it' names {name}, which does not exist"
