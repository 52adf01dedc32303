"""Moderation gates on a worker: the moderation model called through the same router and adapters a `moderate`
task uses, the request gate before any provider call, the response gate on a chat's answer (a streamed one
checked as it goes), and what they found written on the task.

A task with no moderation guardrail costs one dict lookup (`ModerationGates.for_claim`). Blocking steps
(routing state in Redis, writing the record) run on the worker's step threads through `step`; the moderation
call itself is awaited on the event loop like any provider call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from switchyard.core.config import AppConfig
from switchyard.core.db import Database
from switchyard.core.errors import ProviderError
from switchyard.core.guardrail_spec import ModerationGuardrail
from switchyard.guardrails.moderation import keywords as keyword_lists
from switchyard.guardrails.moderation.policy import (
    STREAM_CONTEXT_CHARS,
    StreamWindows,
    Verdict,
    judge,
    request_texts,
    response_texts,
    scores_of,
    when_unavailable,
)
from switchyard.guardrails.resolve import effective
from switchyard.providers.pricing import cost_usd
from switchyard.providers.registry import ProviderSet
from switchyard.providers.router import Router, Unavailable
from switchyard.settings import Settings
from switchyard.tasks import transitions
from switchyard.tasks.transitions import Claim

log = structlog.get_logger(__name__)

# Runs a blocking function on the worker's step threads: step(fn, *args).
Step = Callable[..., Awaitable[Any]]
# Deployments a gate tries before the model counts as unavailable (within the gate's timeout).
_MAX_TRIES = 3
GATED_TYPES = frozenset({"chat", "embed"})


class ModerationGates:
    """The gates of one worker process: the config's guardrails resolved per model once, the keyword list
    compiled once."""

    def __init__(
        self, settings: Settings, config: AppConfig, db: Database, providers: ProviderSet, router: Router
    ) -> None:
        self.config = config
        self.db = db
        self.providers = providers
        self.router = router
        self.timeout_s = settings.moderation_timeout_s
        self.keywords = keyword_lists.load(settings.moderation_keywords_file or keyword_lists.SHIPPED_KEYWORDS)
        # The config file's moderation guardrail of each model (top level unless the model sets its own).
        self.by_model: dict[str, ModerationGuardrail | None] = {
            name: effective(config, name).moderation for name in config.models
        }

    def for_claim(self, claim: Claim) -> TaskGate | None:
        """The gate of a claimed task, or None when no moderation guardrail applies to it."""
        requested = claim.options.get("guardrails")
        if requested and requested.get("moderation"):
            guard: ModerationGuardrail | None = ModerationGuardrail.model_validate(requested["moderation"])
        else:
            guard = self.by_model.get(claim.model)
        if guard is None or claim.type not in GATED_TYPES:
            return None
        done = ((claim.guardrails or {}).get("moderation") or {}).get("request") is not None
        # A task that made an attempt, or that has a request verdict already, passed the request gate.
        on_request = "request" in guard.on and claim.attempt_count == 0 and not done
        on_response = "response" in guard.on and claim.type == "chat"
        if not on_request and not on_response:
            return None
        return TaskGate(self, claim, guard, on_request=on_request, on_response=on_response)


class TaskGate:
    """The moderation gate of one claimed task: its checks, their cost, and their record."""

    def __init__(
        self, gates: ModerationGates, claim: Claim, guard: ModerationGuardrail, *, on_request: bool, on_response: bool
    ) -> None:
        self.gates = gates
        self.claim = claim
        self.guard = guard
        self.request_pending = on_request
        self.on_response = on_response
        earlier = (claim.guardrails or {}).get("moderation") or {}
        self.record: dict[str, Any] = {
            "model": guard.model,
            "calls": int(earlier.get("calls") or 0),
            "cost_usd": float(earlier.get("cost_usd") or 0.0),
            **{k: v for k, v in earlier.items() if k in ("request", "response")},
        }

    # --- the gates --------------------------------------------------------------------------------------------

    async def check_request(self, step: Step) -> dict[str, Any] | None:
        """Score the request before any provider call; the task's error when the gate stops it, else None."""
        self.request_pending = False
        texts = request_texts(self.claim.type, self.claim.input)
        verdict = await self.score(texts, step)
        await self.write("request", verdict, step)
        return verdict.error("request", self.guard.model) if verdict.stops else None

    async def check_response(self, output: dict[str, Any], step: Step) -> dict[str, Any] | None:
        """Score a (non-streamed) answer before the task succeeds; the task's error when the gate stops it."""
        verdict = await self.score(response_texts(output), step)
        await self.write("response", verdict, step)
        return verdict.error("response", self.guard.model) if verdict.stops else None

    def stream(self, step: Step, emit: Callable[[str], None], cut: Callable[[], None]) -> StreamGate:
        """The response gate of a streamed answer: chunks go to `emit` once the text holding them has passed."""
        return StreamGate(self, step, emit, cut)

    # --- scoring ----------------------------------------------------------------------------------------------

    async def score(self, texts: list[str], step: Step) -> Verdict:
        """Texts scored by the guardrail's moderation model, or by `when_unavailable` when it cannot answer
        within the gate's timeout (every deployment failed, breakers open, too slow)."""
        if not texts:
            return Verdict("allowed", "model")
        gates, guard = self.gates, self.guard
        request = {"input": texts}
        route = gates.router.route("moderate", guard.model, request, None, [])
        tries = min(_MAX_TRIES, sum(len(gates.config.models[m].deployments) for m in route.queue))
        deadline = time.monotonic() + gates.timeout_s
        reason = "no deployment could take the call"
        for _ in range(tries):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                reason = f"no answer within {gates.timeout_s:g}s"
                break
            choice = await step(gates.router.choose, route, remaining + 1.0)
            if isinstance(choice, Unavailable):
                reason = choice.reason
                break
            deployment = choice.deployment
            t0 = time.perf_counter()
            try:
                adapter = gates.providers.get(deployment.provider)
                call = adapter.amoderate(deployment.target, request, remaining)
                result = await asyncio.wait_for(call, remaining + 0.5)
            except (ProviderError, TimeoutError) as exc:
                error = exc if isinstance(exc, ProviderError) else ProviderError("timeout", "timed out", retryable=True)
                health = "fail" if error.retryable else None
                await step(gates.router.finish, choice, health, _ms_since(t0), 0)
                route.failed_on(gates.config, choice.model, deployment.name, error.error_type)
                reason = f"{deployment.name}: {error.message}"
                if not error.retryable:
                    break
                continue
            except Exception as exc:  # an adapter bug counts as the model being away, not as a pass
                log.exception("moderation_adapter_crashed", task_id=self.claim.task_id)
                await step(gates.router.finish, choice, None, _ms_since(t0), 0)
                reason = f"{type(exc).__name__}: {exc}"
                break
            await step(gates.router.finish, choice, "ok", _ms_since(t0), 0)
            self.record["calls"] += 1
            self.record["cost_usd"] += cost_usd(result.usage, deployment.price)
            scores, flagged = scores_of(result.output)
            return judge(scores, flagged, guard.thresholds)
        return when_unavailable(texts, guard, gates.keywords, reason)

    async def write(self, direction: str, verdict: Verdict, step: Step, **extra: Any) -> None:
        """Keep the verdict on the task (`guardrails.moderation.<direction>`) with a `task.guardrail` event."""
        self.record[direction] = {**verdict.record(), **extra}
        event = {"direction": direction, **self.record[direction]}
        event.pop("scores", None)
        await step(transitions.record_guardrails, self.gates.db, self.claim, "moderation", dict(self.record), event)


class StreamGate:
    """A streamed answer checked as it goes. Chunks are held until a check has passed the text that holds
    them, then sent on in order; a check that blocks cuts the provider's stream (`cut`) and nothing more is
    sent. Listeners therefore never see text that has not passed."""

    def __init__(self, gate: TaskGate, step: Step, emit: Callable[[str], None], cut: Callable[[], None]) -> None:
        self.gate = gate
        self.step = step
        self.emit = emit
        self.cut = cut
        self.chunks: list[str] = []
        self.released = 0  # chunks sent on
        self.windows = StreamWindows()
        self.due = False
        self.checking: asyncio.Task[None] | None = None
        self.verdict: Verdict | None = None  # the worst so far
        self.checks = 0
        self.closed = False

    @property
    def failure(self) -> dict[str, Any] | None:
        """The task's error once a check stopped the stream."""
        if self.verdict is None or not self.verdict.stops:
            return None
        return self.verdict.error("response", self.gate.guard.model)

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    def on_delta(self, chunk: str) -> None:
        """A chunk from the provider (on the loop's thread)."""
        if self.closed or self.failure is not None:
            return
        self.chunks.append(chunk)
        self.due = self.windows.add(chunk) or self.due
        if self.due and self.checking is None:
            self._start()

    def _start(self) -> None:
        """Check the text so far (a task of its own: the provider's stream goes on meanwhile)."""
        self.due = False
        self.windows.checked()
        self.checking = asyncio.get_running_loop().create_task(self._check(len(self.chunks)))

    async def _check(self, upto: int) -> None:
        try:
            text = "".join(self.chunks[:upto])[-STREAM_CONTEXT_CHARS:]
            verdict = await self.gate.score([text] if text.strip() else [], self.step)
        except Exception as exc:  # Redis or the router failed under the check: the model counts as away
            log.warning("moderation_check_failed", task_id=self.gate.claim.task_id, exc_info=True)
            verdict = when_unavailable([text], self.gate.guard, self.gate.gates.keywords, type(exc).__name__)
        self.checks += 1
        self.verdict = verdict.worst(self.verdict)
        if self.closed:
            return
        if verdict.stops:
            self.cut()
            return
        for chunk in self.chunks[self.released : upto]:
            self.emit(chunk)
        self.released = upto
        self.checking = None
        if self.due:
            self._start()

    async def finish(self) -> dict[str, Any] | None:
        """The provider's stream has ended (or was cut): let the checks in flight end, check what is left, and
        record the stream's verdict. The task's error when the gate stopped it, else None."""
        while (running := self.checking) is not None and not running.done():
            await running  # a check that passes may start the next one: wait for that too
        if self.failure is None and (self.released < len(self.chunks) or self.checks == 0):
            await self._check(len(self.chunks))
        self.closed = True
        verdict = self.verdict or Verdict("allowed", "model")
        await self.gate.write("response", verdict, self.step, checks=self.checks)
        return self.failure

    def abandon(self) -> None:
        """The call failed otherwise: send nothing more, whatever a check in flight decides."""
        self.closed = True


def _ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000
