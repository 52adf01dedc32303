"""The Grafana dashboard and the Prometheus alert rules in deploy/ only name metrics the code registers, and are
valid PromQL (promtool, when installed: `apt-get install prometheus` brings it)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from switchyard.observability.metrics import families
from switchyard.observability.state import FAMILIES as STATE_FAMILIES

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "switchyard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

# PromQL's words that are not metric names.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"), "gauge": ("",)}


def registered() -> set[str]:
    """Every series name the code can expose: the process's families (with their suffixes) and the API's
    shared-state gauges."""
    assert families() is not None, "metrics are on by default"
    names = set(STATE_FAMILIES)
    for family in REGISTRY.collect():
        if family.name.startswith("switchyard_"):
            names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]
    assert exprs
    return exprs


def alert_exprs() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    exprs = [str(rule["expr"]) for group in rules["groups"] for rule in group["rules"]]
    assert exprs
    return exprs


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers left once strings, label matchers, ranges, grouping
    clauses and function calls are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word in KEYWORDS or re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.add(word)
    return names


def test_the_parser_finds_metric_names() -> None:
    expr = 'sum by (le, route) (rate(switchyard_x_bucket{status=~"5.."}[5m])) / clamp_min(switchyard_y, 1e-9) > 0.5'
    assert metric_names(expr) == {"switchyard_x_bucket", "switchyard_y"}
    assert metric_names("time() - max by (duty) (switchyard_z)") == {"switchyard_z"}


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_query_names_only_registered_metrics(source: str) -> None:
    known = registered()
    exprs = dashboard_exprs() if source == "dashboard" else alert_exprs()
    used: set[str] = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        unknown = names - known
        assert not unknown, f"{source}: {expr!r} names metrics no code registers: {sorted(unknown)}"
        used |= names
    if source == "dashboard":
        # The sections the dashboard promises are there.
        for family in (
            "switchyard_http_requests_total",
            "switchyard_gateway_overhead_seconds_bucket",
            "switchyard_time_to_first_token_seconds_bucket",
            "switchyard_cost_usd_total",
            "switchyard_deployment_up",
            "switchyard_queue_depth",
            "switchyard_calls_in_flight",
            "switchyard_webhook_backlog",
        ):
            assert family in used, family


def test_alerts_cover_what_operators_page_on() -> None:
    rules = yaml.safe_load(ALERTS.read_text())
    names = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    for alert in (
        "SwitchyardBreakerOpen",
        "SwitchyardQueueBacklogOld",
        "SwitchyardHighErrorRate",
        "SwitchyardBudgetNearExhaustion",
        "SwitchyardSweeperStalled",
    ):
        assert alert in names


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus brings it)")
def test_promtool_checks_the_rules_and_the_dashboards_queries(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    # The dashboard's queries, as recording rules: promtool parses each (Grafana's $__rate_interval made 5m).
    recording: dict[str, Any] = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"switchyard:dashboard_query_{i}", "expr": expr.replace("$__rate_interval", "5m")}
                    for i, expr in enumerate(dashboard_exprs())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(recording))
    done = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
