"""Schemathesis over the served /openapi.json, against the real API process, its workers and a real key.

Every operation and method, in every phase Schemathesis has (the documented examples, the coverage of each
schema's edges, random fuzzing, and stateful sequences that follow the links between operations): no answer may
be a 5xx, and every answer must be one the document describes (status, content type, headers, body schema).

In CI the run is bounded (a few examples per operation and a time budget); `make drill` runs the long one:
SWITCHYARD_FUZZ_EXAMPLES (examples per operation) and SWITCHYARD_FUZZ_SECONDS (the budget) choose its size.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import Stack

EXAMPLES = int(os.environ.get("SWITCHYARD_FUZZ_EXAMPLES", "4"))
SECONDS = int(os.environ.get("SWITCHYARD_FUZZ_SECONDS", "60"))
SEED = os.environ.get("SWITCHYARD_FUZZ_SEED")
CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        # A request without the key must be refused, whatever else it carries.
        "ignored_auth",
        # Stateful: an object just created can be read, and one deleted is gone.
        "ensure_resource_availability",
        "use_after_free",
    )
)


def schemathesis() -> list[str]:
    """The CLI of the schemathesis installed next to this interpreter."""
    found = Path(sys.executable).with_name("schemathesis")
    return [str(found)] if found.exists() else [shutil.which("schemathesis") or "schemathesis"]


def run_schemathesis(url: str, key: str, report: Path, *, examples: int, seconds: int) -> dict[str, Any]:
    """One `schemathesis run` against `url`; returns its JSON report (with the console output under 'output')."""
    argv = [
        *schemathesis(),
        "run",
        f"{url}/openapi.json",
        "--header",
        f"Authorization: Bearer {key}",
        "--checks",
        CHECKS,
        "--max-examples",
        str(examples),
        "--max-time",
        str(seconds),
        # A request slower than this is a hang as far as a client is concerned.
        "--request-timeout",
        "30",
        # One worker: with more, Hypothesis parses lambdas' source in several threads at once, which
        # CPython 3.11's parser does not survive ("AST constructor recursion depth mismatch").
        "--workers",
        "1",
        "--report",
        "json",
        "--report-json-path",
        str(report),
        "--no-color",
        *(["--seed", SEED] if SEED else []),
    ]
    # Its cache (.schemathesis/) goes in the test's folder, not the checkout.
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 240, cwd=report.parent)
    assert report.exists(), done.stdout[-6000:] + done.stderr[-6000:]
    result: dict[str, Any] = json.loads(report.read_text())
    result["output"] = done.stdout + done.stderr
    return result


# The stack's start, the run's budget, and Schemathesis's own start and report.
@pytest.mark.timeout(SECONDS + 400)
def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(
    probe_stack: Stack, probe_key: str, tmp_path: Path
) -> None:
    operations = sum(
        method in ("get", "post", "put", "patch", "delete")
        for item in httpx.get(f"{probe_stack.url}/openapi.json").json()["paths"].values()
        for method in item
    )
    result = run_schemathesis(
        probe_stack.url, probe_key, tmp_path / "schemathesis.json", examples=EXAMPLES, seconds=SECONDS
    )
    cases = result["test_cases"]
    # Printed for the report of a long run (pytest -s).
    print(  # noqa: T201
        f"schemathesis: {result['operations']['tested']} operations tested of {operations}, "
        f"{cases['generated']} test cases, {cases['unique_failures']} unique failures, "
        f"{result['running_time']:.0f}s, seed {result['seed']}"
    )
    assert result["errors"] == [], result["output"][-8000:]
    assert result["failures"] == [], result["output"][-12000:]
    assert result["operations"]["tested"] == operations, result["operations"]
    assert result["phases"]["stateful"]["status"] == "success", result["phases"]
    assert cases["generated"] >= operations * min(EXAMPLES, 3)
    # The API itself logged no unhandled exception while being fuzzed.
    assert "Traceback" not in probe_stack.api.log(), probe_stack.api.log()[-6000:]
