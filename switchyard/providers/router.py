"""Which deployment serves an attempt, and how long to wait before the next one.

A task's route starts at its logical model. Each attempt goes to a deployment of the current model that
is usable — its breaker closed (or cooled down: then the attempt is the half-open probe), under its `rpm`
and `tpm`, and with a context window the prompt fits — choosing by the model's strategy among those this
task has not yet seen fail. When none is left, the route moves on to the model's `fallbacks`; a
context-length error (or a prompt that fits no deployment) moves it to `context_window_fallbacks` first, a
content-policy refusal to `content_policy_fallbacks`. On the last model it retries the deployments that
failed; when none can be used at all it answers how long to wait. Pinning a provider keeps the route on
that provider's deployments of the task's own model.

The route is rebuilt from the task's recorded attempts whenever a worker (re)claims it, so a task handed
back with a due time continues where it was.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from switchyard.core.config import AppConfig, BreakerConfig, Deployment, ModelConfig
from switchyard.core.ids import new_id
from switchyard.ml.versions import VersionWeights
from switchyard.providers.health import Admission, DeploymentHealth, Stats
from switchyard.providers.limits import RateLimits

# Output tokens assumed for a chat without max_tokens, to compare costs (lowest_cost).
ASSUMED_OUTPUT_TOKENS = 256
# Error types that send the route to the special fallbacks.
CONTEXT_EXCEEDED = "context_length_exceeded"
CONTENT_BLOCKED = "content_blocked"


def candidates(model: ModelConfig, pinned_provider: str | None, version: str | None = None) -> list[Deployment]:
    """The deployments an attempt may use: all of them, or those of the pinned provider; of a model with
    versions, those of the task's version."""
    return [
        d
        for d in model.deployments
        if (pinned_provider is None or d.provider == pinned_provider) and (version is None or d.version == version)
    ]


def backoff_s(attempt: int, *, base_s: float, max_s: float, retry_after_s: float | None) -> float:
    """Exponential backoff with full jitter after failed attempt n; a provider's Retry-After is a floor."""
    jittered = random.uniform(0, min(max_s, base_s * 2 ** (attempt - 1)))
    if retry_after_s is not None:
        return max(retry_after_s, min(jittered, 1.0))
    return jittered


def estimate_tokens(task_type: str, request: dict[str, Any]) -> int:
    """About how many prompt tokens a request has (4 characters a token): for context windows, `tpm` and
    `lowest_cost`, before the provider counts them exactly."""
    if task_type == "chat":
        chars = 0
        for message in request.get("messages", ()):
            content = message.get("content")
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                chars += sum(len(part.get("text") or "") for part in content if isinstance(part, dict))
            if message.get("tool_calls"):
                chars += len(orjson.dumps(message["tool_calls"]))
        if request.get("tools"):
            chars += len(orjson.dumps(request["tools"]))
        return math.ceil(chars / 4)
    value = request.get("input")
    if isinstance(value, str):
        return math.ceil(len(value) / 4)
    if isinstance(value, list):
        return math.ceil(sum(len(v) for v in value if isinstance(v, str)) / 4)
    return 0


@dataclass(frozen=True)
class Earlier:
    """An attempt the task made before: on which model and deployment, and how it ended."""

    model: str
    deployment: str
    ok: bool
    error_type: str | None


@dataclass
class Route:
    """Where a task stands: the models still to try (the current one first) and what failed."""

    queue: list[str]
    pinned: str | None
    prompt_tokens: int
    max_output_tokens: int
    failed: set[tuple[str, str]] = field(default_factory=set)
    used: set[str] = field(default_factory=set)
    # The version each model with versions serves this task: chosen once, kept for retries and failover.
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def model(self) -> str:
        return self.queue[0]

    def failed_on(self, config: AppConfig, model: str, deployment: str, error_type: str | None) -> None:
        """Take a failure into account; errors with a fallback of their own move the route on at once."""
        self.failed.add((model, deployment))
        special = {
            CONTEXT_EXCEEDED: config.models[model].context_window_fallbacks,
            CONTENT_BLOCKED: config.models[model].content_policy_fallbacks,
        }.get(error_type or "")
        if special and self.pinned is None and model == self.model:
            self._jump(special)

    def _jump(self, models: Sequence[str]) -> None:
        current = self.queue[0]
        ahead = [m for m in models if m not in self.used and m != current]
        if not ahead:
            return  # every one was tried already: the task fails on its own error
        self.used.add(current)
        self.queue = ahead + [m for m in self.queue[1:] if m not in ahead]

    def advance(self) -> None:
        self.used.add(self.queue.pop(0))


@dataclass(frozen=True)
class Choice:
    """A deployment admitted for one attempt; `finish` must follow the call."""

    model: str
    deployment: Deployment
    admission: Admission


@dataclass(frozen=True)
class Unavailable:
    """No deployment of the route can take a call now; try again after `wait_s`."""

    wait_s: float
    reason: str


class Router:
    def __init__(
        self, config: AppConfig, health: DeploymentHealth, limits: RateLimits, weights: VersionWeights | None = None
    ) -> None:
        self.config = config
        self.health = health
        self.limits = limits
        # The traffic split between versions of predict models (the config's alone without a database).
        self.weights = weights or VersionWeights(config, None)
        # A deployment listed by several models keeps one breaker: the first listing's settings count.
        self.breakers: dict[str, BreakerConfig] = {}
        for name, model in config.models.items():
            for dep in model.deployments:
                self.breakers.setdefault(dep.name, config.breaker_for(name))

    def route(
        self,
        task_type: str,
        model: str,
        request: dict[str, Any],
        pinned: str | None,
        earlier: list[Earlier],
        version: str | None = None,
    ) -> Route:
        """The route of a task, with its earlier attempts taken into account; `version` pins the version of a
        model that has versions (else one is drawn by weight, or kept from the task's earlier attempts)."""
        queue = [model] if pinned is not None else list(dict.fromkeys([model, *self.config.models[model].fallbacks]))
        max_output = request.get("max_tokens") or request.get("max_completion_tokens") or ASSUMED_OUTPUT_TOKENS
        route = Route(queue, pinned, estimate_tokens(task_type, request), int(max_output))
        if version is not None and self.config.models[model].versions:
            route.versions[model] = version
        for attempt in earlier:
            spec = self.config.models.get(attempt.model)
            if spec is None:
                continue
            if spec.versions and attempt.model not in route.versions:
                served = next((d.version for d in spec.deployments if d.name == attempt.deployment), None)
                if served is not None:
                    route.versions[attempt.model] = served
            if not attempt.ok:
                route.failed_on(self.config, attempt.model, attempt.deployment, attempt.error_type)
        return route

    def version(self, route: Route, name: str) -> str | None:
        """The version of model `name` this task uses (drawn by the current weights the first time)."""
        model = self.config.models[name]
        if not model.versions:
            return None
        chosen = route.versions.get(name)
        if chosen is None:
            chosen = route.versions[name] = self.weights.pick(name, model)
        return chosen

    def choose(self, route: Route, lease_s: float) -> Choice | Unavailable:
        while True:
            name = route.model
            model = self.config.models[name]
            options = candidates(model, route.pinned, self.version(route, name))
            fitting = [d for d in options if d.max_input_tokens is None or route.prompt_tokens <= d.max_input_tokens]
            if not fitting and model.context_window_fallbacks and route.pinned is None:
                route.failed_on(self.config, name, "", CONTEXT_EXCEEDED)
                if route.model != name:
                    continue
            # Without a bigger model to go to, the provider judges the prompt itself.
            pool = fitting or options
            stats = dict(zip([d.name for d in pool], self._read(pool), strict=True))
            usable = [
                d for d in pool if self.health.usable(stats[d.name]) and self.limits.has_room(d, route.prompt_tokens)
            ]
            untried = [d for d in usable if (name, d.name) not in route.failed]
            if not untried and len(route.queue) > 1:
                route.advance()  # every deployment failed or is unavailable: on to the fallbacks
                continue
            choice = self._admit(name, model, untried or usable, stats, route, lease_s)
            if choice is not None:
                return choice
            if len(route.queue) > 1:
                route.advance()
                continue
            return Unavailable(self._wait_hint(pool, stats), f"no deployment of '{name}' can take a call now")

    def finish(self, choice: Choice, outcome: str | None, latency_ms: float, tokens: int) -> None:
        """Record a call's end: "ok", "fail" (held against the deployment) or None (the caller's fault)."""
        self.health.end(choice.admission, outcome, latency_ms)
        self.limits.spend_tokens(choice.deployment, tokens)

    def fails_over_at_once(self, route: Route) -> bool:
        """Whether the next attempt goes somewhere that has not failed yet (then there is no point waiting)."""
        untried = [
            d
            for d in candidates(self.config.models[route.model], route.pinned, self.version(route, route.model))
            if (route.model, d.name) not in route.failed
        ]
        return bool(untried) or len(route.queue) > 1

    # --- internals ----------------------------------------------------------------------------------------------

    def _read(self, deployments: list[Deployment]) -> list[Stats]:
        names = [d.name for d in deployments]
        if not names:
            return []
        # One read for all; bucket widths differ only if models set different windows for one deployment.
        return self.health.read(names, self.breakers[names[0]])

    def _admit(
        self,
        name: str,
        model: ModelConfig,
        pool: list[Deployment],
        stats: dict[str, Stats],
        route: Route,
        lease_s: float,
    ) -> Choice | None:
        pool = list(pool)
        while pool:
            dep = self._pick(name, model, pool, stats, route)
            pool.remove(dep)
            admission = self.health.admit(dep.name, new_id("call"), stats[dep.name], self.breakers[dep.name], lease_s)
            if admission is None:
                continue  # another call is the probe of this half-open breaker
            if not self.limits.take(dep):
                self.health.end(admission, None, 0.0)  # another worker took the last request of the minute
                continue
            return Choice(name, dep, admission)
        return None

    def _pick(
        self, name: str, model: ModelConfig, pool: list[Deployment], stats: dict[str, Stats], route: Route
    ) -> Deployment:
        if len(pool) == 1 or model.strategy == "ordered":
            return pool[0]
        if model.strategy == "weighted":
            return random.choices(pool, weights=[d.weight for d in pool])[0]
        if model.strategy == "round_robin":
            return pool[self._turn(name) % len(pool)]
        if model.strategy == "least_latency":
            # A deployment with no recent latency is tried first: that is how it gets one.
            return min(pool, key=lambda d: (stats[d.name].mean_latency_ms or 0.0, random.random()))
        if model.strategy == "least_busy":
            return min(pool, key=lambda d: (stats[d.name].in_flight, random.random()))
        # lowest_cost
        return min(
            pool,
            key=lambda d: d.price.input * route.prompt_tokens + d.price.output * route.max_output_tokens,
        )

    def _turn(self, name: str) -> int:
        return self.health.next_turn(name)

    def _wait_hint(self, pool: list[Deployment], stats: dict[str, Stats]) -> float:
        waits = []
        for dep in pool:
            s = stats[dep.name]
            if s.state == "open":
                waits.append(s.open_until - time.time())
            if dep.rpm is not None or dep.tpm is not None:
                waits.append(self.limits.seconds_until_room(dep))
        return min(30.0, max(0.2, min(waits) if waits else 1.0))
