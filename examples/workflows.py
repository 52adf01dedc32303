"""Run the shipped workflows (switchyard/defaults/workflows/*.yaml) and follow each run to its end.

Run it with the service up (`make dev` in another terminal prints the URL and a key):

    SWITCHYARD_API_KEY=sy_... python examples/workflows.py [NAME ...]

SWITCHYARD_URL defaults to http://127.0.0.1:8000. For each NAME (default: every file in examples/workflows/)
it starts a run of that workflow with examples/workflows/NAME.json as the request body ({"input": {...}}),
polls `GET /v1/runs/{id}`, prints each step as its status changes, then every step's status, cost and
output, and the run's output. The same start with curl:

    curl -s $SWITCHYARD_URL/v1/workflows/risk_analysis/runs -H "Authorization: Bearer $KEY" \\
      -H 'Content-Type: application/json' -d @examples/workflows/risk_analysis.json

Exits 1 if a run does not succeed.
"""

import json
import os
import sys
import time
from pathlib import Path

import httpx

URL = os.environ.get("SWITCHYARD_URL", "http://127.0.0.1:8000").rstrip("/")
KEY = os.environ.get("SWITCHYARD_API_KEY")
if not KEY:
    sys.exit("SWITCHYARD_API_KEY is not set: use the key `make dev` printed (SWITCHYARD_API_KEY=sy_... python ...)")

INPUTS = Path(__file__).with_name("workflows")
api = httpx.Client(base_url=URL, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)


def result(output: object) -> object:
    """What a step produced: a chat task's text, an ML task's outputs (a for_each step: the list of them)."""
    if isinstance(output, list):
        return [result(item) for item in output]
    if isinstance(output, dict):
        return output.get("content", output.get("outputs", output))
    return output


def brief(value: object, width: int = 100) -> str:
    text = json.dumps(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def run_workflow(name: str) -> bool:
    # The definition: its steps, in the order they are written (a run's `steps` is keyed by step id).
    response = api.get(f"/v1/workflows/{name}")
    if response.status_code != 200:
        sys.exit(f"GET /v1/workflows/{name} answered {response.status_code}: {response.text}")
    definition = response.json()
    order = [step["id"] for step in definition["definition"]["steps"]]
    print(f"{name} v{definition['version']}: {definition['definition'].get('description', '')}")

    body = json.loads((INPUTS / f"{name}.json").read_text())
    response = api.post(f"/v1/workflows/{name}/runs", json=body)
    if response.status_code != 202:
        sys.exit(f"POST /v1/workflows/{name}/runs answered {response.status_code}: {response.text}")
    run_id = response.json()["id"]
    print(f"  started {run_id}")

    # Poll until the run ends, printing each step whose status changed. (GET /v1/runs/{id}/events, SSE, or a
    # WebSocket subscription with "run_id" tell the same without polling; see sse.py and websocket.py.)
    seen: dict[str, str] = {}
    deadline = time.monotonic() + 180
    while True:
        run = api.get(f"/v1/runs/{run_id}").raise_for_status().json()
        for step_id in order:
            status = run["steps"][step_id]["status"]
            if seen.get(step_id) != status:
                seen[step_id] = status
                print(f"    {step_id:<16} {status}")
        if run["status"] in ("succeeded", "failed", "canceled"):
            break
        if time.monotonic() > deadline:
            sys.exit(f"{run_id} is still {run['status']} after 180 s")
        time.sleep(0.25)

    print(
        f"  {run_id} {run['status']}: {run['progress']['done']}/{run['progress']['total']} steps, "
        f"cost ${run['cost_usd']:.6f}"
    )
    for step_id in order:
        step = run["steps"][step_id]
        # A for_each step's output is the list of its tasks' results; a skipped step (`when` false) has none.
        shown = step["error"] if step["error"] else result(step["output"])
        print(f"    {step_id:<16} {step['status']:<10} {len(step['task_ids'])} task(s)  {brief(shown, 70)}")
    for key, value in (run["output"] or {}).items():
        print(f"  output.{key} = {brief(value)}")
    if run["status"] != "succeeded":
        print(f"  error: {run.get('error')}")
    return run["status"] == "succeeded"


names = sys.argv[1:] or sorted(path.stem for path in INPUTS.glob("*.json"))
results = [run_workflow(name) for name in names]
sys.exit(0 if all(results) else 1)
