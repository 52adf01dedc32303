"""What `GET /v1/providers` shows of each deployment: its breaker, recent success rate, latency and load."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any, Protocol

from switchyard.core.config import AppConfig, Deployment
from switchyard.providers.health import LATENCIES_KEPT, DeploymentHealth


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class LimitsView(Protocol):
    """The room left under a deployment's rate limits: `RateLimits` itself, or what the workers last wrote of
    theirs (embedded mode, `health_snapshots`)."""

    def usage(self, dep: Deployment) -> dict[str, int | None]: ...


def deployment_status(config: AppConfig, health: DeploymentHealth, limits: LimitsView) -> list[dict[str, Any]]:
    """Every deployment once (a deployment several models list is one upstream, with one breaker)."""
    listed: dict[str, tuple[Deployment, list[str]]] = {}
    for name, model in config.models.items():
        for dep in model.deployments:
            listed.setdefault(dep.name, (dep, []))[1].append(name)
    out = []
    now = time.time()
    for dep_name, (dep, models) in listed.items():
        breaker = config.breaker_for(models[0])
        [stats] = health.read([dep_name], breaker, keep=LATENCIES_KEPT)
        total = stats.ok + stats.failed
        state = stats.state
        if state == "open" and now >= stats.open_until:
            state = "half_open"  # cooled down: the next call is its probe
        latencies = list(stats.latencies_ms)
        out.append(
            {
                "deployment": dep_name,
                "provider": dep.provider,
                "kind": config.providers[dep.provider].kind,
                "model": dep.model,
                "models": models,
                "breaker": {
                    "state": state,
                    "open_until": datetime.fromtimestamp(stats.open_until, UTC).isoformat()
                    if stats.state == "open"
                    else None,
                    "window_s": breaker.window_s,
                    "ok": stats.ok,
                    "failed": stats.failed,
                },
                "success_rate": round(stats.ok / total, 4) if total else None,
                "latency_ms": {
                    "p50": _percentile(latencies, 0.50),
                    "p95": _percentile(latencies, 0.95),
                    "samples": len(latencies),
                },
                "in_flight": stats.in_flight,
                "rpm": dep.rpm,
                "tpm": dep.tpm,
                **limits.usage(dep),
                "max_input_tokens": dep.max_input_tokens,
                "price": dep.price.model_dump(exclude_none=True),
            }
        )
    return out
