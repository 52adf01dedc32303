"""A claimed task's provider call, awaited on the worker's event loop.

What a task carries from call to call (`Execution`), what one call ends with (`Outcome`), and the call itself
(`ProviderCalls.call`): plain, streamed to listeners, or through a moderation gate on the answer. The blocking
steps around it (claim, choose, settle) are in tasks/execution.py, whose `Executor` makes the calls.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from switchyard.core.config import AppConfig, Deployment
from switchyard.core.errors import ProviderError
from switchyard.core.models import utcnow
from switchyard.events.bus import delta_event
from switchyard.guardrails import pii
from switchyard.observability import genai, metrics
from switchyard.providers.base import CallResult, ProviderAdapter, Usage
from switchyard.providers.pricing import cost_usd
from switchyard.providers.registry import ProviderSet
from switchyard.providers.router import Choice, Route, estimate_tokens
from switchyard.tasks.moderation_gate import Step, StreamGate, TaskGate
from switchyard.tasks.transitions import AttemptRecord, Claim

# Named after the module the calls were made in before they had their own, so log lines keep their logger name.
log = structlog.get_logger("switchyard.tasks.execution")

# Publishes an event that is not stored (a `task.delta`) to the listeners of a tenant.
DeltaSink = Callable[[str, dict[str, Any]], None]


@dataclass
class Execution:
    """A claimed task on its way: its route, the deployment chosen for the next call, attempts so far."""

    claim: Claim
    route: Route
    choice: Choice | None
    max_attempts: int
    timeout_s: float
    n: int = field(init=False)
    # Its moderation gate (None: no moderation guardrail applies, nothing to do).
    gate: TaskGate | None = None

    def __post_init__(self) -> None:
        self.n = self.claim.attempt_count + 1


@dataclass(frozen=True)
class Outcome:
    """One finished provider call, successful or not."""

    deployment: Deployment
    model: str  # the logical model it was made for (a fallback's, maybe)
    n: int
    started_at: Any
    latency_ms: int
    result: CallResult | None = None
    error: ProviderError | None = None
    batch: bool = False  # a batch line: the deployment's batch price applies when it has one
    # The task's error when a guardrail stopped the answer: the task fails with it, whatever fallbacks exist.
    failure: dict[str, Any] | None = None

    @property
    def cost(self) -> float:
        if self.result is None:
            return 0.0
        price = self.deployment.price
        return cost_usd(self.result.usage, price.batch if self.batch and price.batch is not None else price)

    def record(self) -> AttemptRecord:
        error = self.error
        return AttemptRecord(
            n=self.n,
            model=self.model,
            provider=self.deployment.provider,
            deployment=self.deployment.name,
            provider_model=(self.result.provider_model if self.result else "") or self.deployment.model,
            error_type=error.error_type if error else None,
            error_message=error.message if error else None,
            status_code=error.status_code if error else None,
            latency_ms=self.latency_ms,
            usage=self.result.usage if self.result else Usage(),
            cost_usd=self.cost,
            started_at=self.started_at,
            finished_at=utcnow(),
        )


class ProviderCalls:
    """The provider calls of a worker's `Executor`, which sets the resources they use."""

    config: AppConfig
    providers: ProviderSet
    deltas: DeltaSink | None

    async def call(self, ex: Execution, step: Step | None = None) -> Outcome:
        """One provider call for the chosen deployment, on the running event loop; with a moderation gate on
        the response, its answer is checked (a streamed one as it goes) before it counts. `step` runs the
        gate's blocking steps on the caller's threads."""
        assert ex.choice is not None
        claim, deployment, model, n = ex.claim, ex.choice.deployment, ex.choice.model, ex.n
        batch = claim.batch_id is not None
        adapter = self.providers.get(deployment.provider)
        started_at = utcnow()
        t0 = time.perf_counter()
        chunks = 0
        stream = claim.type == "chat" and bool(claim.options.get("stream")) and self.deltas is not None
        # A PII guardrail on the answer scrubs it before anything of it is published or stored.
        guardrail = pii.response_guardrail(self.config, claim.model, claim.options)
        answer = pii.AnswerScrub(guardrail, stream) if guardrail is not None else None

        def publish(text: str) -> None:
            nonlocal chunks
            assert self.deltas is not None
            event = delta_event(
                task_id=claim.task_id, run_id=claim.run_id, step_id=claim.step_id, index=chunks, content=text
            )
            self.deltas(claim.tenant_id, event)
            if not chunks:
                metrics.first_token(model, time.perf_counter() - t0)
            chunks += 1

        def on_delta(text: str) -> None:
            text = answer.chunk(text) if answer is not None else text
            if text:
                publish(text)

        def scrubbed(result: CallResult) -> CallResult:
            if answer is None:
                return result
            if stream and (rest := answer.rest()):
                publish(rest)
            output = answer.result(claim.type, result.output)
            claim.guardrails = answer.record(claim.guardrails)  # after result(): it counts what that scrubbed
            return CallResult(output, result.usage, result.provider_model)

        gate = ex.gate if ex.gate is not None and ex.gate.on_response else None
        if gate is not None:
            # The moderation gate sees the answer as the provider wrote it; what it lets through is scrubbed.
            gated = await self._call_gated(ex, gate, step or _default_step, on_delta if stream else None)
            if gated.error is None and gated.result is not None:
                return dataclasses.replace(gated, result=scrubbed(gated.result))
            return gated
        try:
            result = await genai.traced_call(
                _invoke(
                    adapter, claim.type, deployment.target, claim.input, ex.timeout_s, on_delta if stream else None
                ),
                config=self.config,
                deployment=deployment,
                task_type=claim.type,
                task_id=claim.task_id,
                attempt=n,
            )
        except ProviderError as exc:
            if chunks:
                exc = _interrupted(exc, chunks)
            return Outcome(deployment, model, n, started_at, _ms_since(t0), error=exc, batch=batch)
        except Exception as exc:  # an adapter bug must fail the attempt, not the loop
            err = _crashed(exc, claim, deployment)
            return Outcome(deployment, model, n, started_at, _ms_since(t0), error=err, batch=batch)
        return Outcome(deployment, model, n, started_at, _ms_since(t0), result=scrubbed(result), batch=batch)

    async def _call_gated(
        self, ex: Execution, gate: TaskGate, step: Step, on_delta: Callable[[str], None] | None
    ) -> Outcome:
        """`call` with the response gate: the answer checked before it counts; a streamed one checked as it
        goes, its chunks held until passed, its provider call cut when a check blocks."""
        assert ex.choice is not None
        claim, deployment, model, n = ex.claim, ex.choice.deployment, ex.choice.model, ex.n
        batch = claim.batch_id is not None
        adapter = self.providers.get(deployment.provider)
        started_at = utcnow()
        t0 = time.perf_counter()
        invoke: asyncio.Task[CallResult] | None = None

        def cut() -> None:
            if invoke is not None:
                invoke.cancel()

        watch: StreamGate | None = gate.stream(step, on_delta, cut) if on_delta is not None else None
        call = _invoke(
            adapter, claim.type, deployment.target, claim.input, ex.timeout_s, watch.on_delta if watch else None
        )
        invoke = asyncio.ensure_future(
            genai.traced_call(
                call, config=self.config, deployment=deployment, task_type=claim.type, task_id=claim.task_id, attempt=n
            )
        )
        try:
            result = await invoke
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if watch is None or watch.failure is None or (current is not None and current.cancelling()):
                if watch is not None:
                    watch.abandon()
                raise  # not our cut: the worker is shutting down
            # Cut by the gate: the provider has produced (and billed) about this much.
            usage = Usage(estimate_tokens("chat", claim.input), math.ceil(len(watch.text) / 4))
            await watch.finish()
            error = ProviderError("content_blocked", watch.failure["message"], retryable=False)
            partial_result = CallResult(output={}, usage=usage, provider_model=deployment.model)
            return Outcome(deployment, model, n, started_at, _ms_since(t0), partial_result, error, batch, watch.failure)
        except ProviderError as exc:
            if watch is not None:
                watch.abandon()
                if watch.released:
                    exc = _interrupted(exc, watch.released)
            return Outcome(deployment, model, n, started_at, _ms_since(t0), error=exc, batch=batch)
        except Exception as exc:  # an adapter bug must fail the attempt, not the loop
            if watch is not None:
                watch.abandon()
            err = _crashed(exc, claim, deployment)
            return Outcome(deployment, model, n, started_at, _ms_since(t0), error=err, batch=batch)
        latency = _ms_since(t0)
        failure = await watch.finish() if watch is not None else await gate.check_response(result.output, step)
        if failure is None:
            return Outcome(deployment, model, n, started_at, latency, result=result, batch=batch)
        error = ProviderError(failure["type"], failure["message"], retryable=False)
        return Outcome(deployment, model, n, started_at, latency, result, error, batch, failure)


async def _invoke(
    adapter: ProviderAdapter,
    task_type: str,
    model: str,
    request: dict[str, Any],
    timeout_s: float,
    on_delta: Callable[[str], None] | None,
) -> CallResult:
    """The adapter's async method for the task type, cut at `timeout_s`: the SDKs' timeouts bound each connect
    and read, not the call, so a provider that trickles its stream would otherwise hold the attempt (and the
    task's lease) for as long as it kept sending."""
    try:
        async with asyncio.timeout(timeout_s):
            if task_type == "chat":
                return await adapter.achat(model, request, timeout_s, on_delta)
            if task_type == "embed":
                return await adapter.aembed(model, request, timeout_s)
            if task_type == "moderate":
                return await adapter.amoderate(model, request, timeout_s)
            if task_type == "predict":
                return await adapter.apredict(model, request, timeout_s)
    except TimeoutError:
        message = f"the call took longer than its timeout of {timeout_s:g}s"
        raise ProviderError("timeout", message, retryable=True) from None
    raise ProviderError("invalid_request", f"{task_type} tasks are not served yet", retryable=False)


def _interrupted(exc: ProviderError, sent: int) -> ProviderError:
    """A call's error once `sent` chunks of its stream reached listeners: another attempt would send them again,
    so the task fails instead."""
    return ProviderError(
        "stream_interrupted",
        f"the stream broke after {sent} chunks were sent: {exc.message}",
        retryable=False,
        status_code=exc.status_code,
    )


def _crashed(exc: Exception, claim: Claim, deployment: Deployment) -> ProviderError:
    """Logs an adapter's unexpected exception (call from its `except` block) and makes it the attempt's error."""
    log.exception("adapter_crashed", task_id=claim.task_id, provider=deployment.provider)
    # The exception's text stays in the server's log: it may hold a path, an address or part of the request.
    return ProviderError(
        "provider_error", f"the {deployment.provider} adapter failed ({type(exc).__name__})", retryable=False
    )


async def _default_step(fn: Callable[..., Any], *args: Any) -> Any:
    """Blocking work of a gate on the loop's default threads (for a caller with no step threads of its own)."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def _ms_since(t0: float) -> int:
    return int((time.perf_counter() - t0) * 1000)
