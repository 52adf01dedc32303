"""Running a task on a worker: claim it, call providers attempt by attempt, record every attempt, finish once.

The provider call is awaited on the worker's event loop (`call`); everything around it — the claim, routing
state in Redis, recording an attempt, the finish — is short blocking work that the runtime runs on a few
threads (`start`, `settle`, `choose_next`). Each state change is its own transition (tasks/transitions.py),
so a killed worker leaves at most a lease that the sweeper reclaims.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import structlog
from sqlalchemy import select

from switchyard.core.config import AppConfig, Deployment
from switchyard.core.db import Database
from switchyard.core.errors import ProviderError
from switchyard.core.group_commit import GroupCommit
from switchyard.core.models import Attempt, utcnow
from switchyard.events.bus import delta_event
from switchyard.guardrails import pii
from switchyard.observability import genai, metrics
from switchyard.providers.base import CallResult, ProviderAdapter, Usage
from switchyard.providers.pricing import cost_usd
from switchyard.providers.registry import ProviderSet
from switchyard.providers.router import Choice, Earlier, Route, Router, Unavailable, backoff_s, estimate_tokens
from switchyard.settings import Settings
from switchyard.tasks import transitions
from switchyard.tasks.moderation_gate import ModerationGates, Step, StreamGate, TaskGate
from switchyard.tasks.transitions import AttemptRecord, Claim, Finished, RunAdvancer, TaskStatus

log = structlog.get_logger(__name__)

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


class Executor:
    """Executes tasks with the resources of one worker process."""

    def __init__(
        self,
        settings: Settings,
        config: AppConfig,
        db: Database,
        providers: ProviderSet,
        router: Router,
        dispatcher: RunAdvancer | None = None,
        on_finished: Callable[[str, dict[str, Any]], None] | None = None,
        deltas: DeltaSink | None = None,
        dispatch: transitions.Dispatcher | None = None,
        batch_advancer: transitions.BatchAdvancer | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.db = db
        self.providers = providers
        self.router = router
        # Asked to advance a workflow run when one of its tasks finishes; told by the synchronous endpoints'
        # waiters (after the commit) when a task reaches its final state.
        # Asked to advance a batch when one of its lines' tasks finishes.
        self.finished = Finished(on_finished=on_finished, advancer=dispatcher, batch_advancer=batch_advancer)
        # Where a streaming chat task's text chunks go as they arrive (None: nobody can listen, do not stream).
        self.deltas = deltas
        self.gates = ModerationGates(settings, config, db, providers, router)
        # Publishes a task handed back at shutdown.
        self.dispatch = dispatch
        # Finishes settled at the same time on several threads are written in one statement.
        self.finishes: transitions.FinishGroup | None = (
            GroupCommit(partial(transitions.write_first_finishes, db), key=_finished_id, timeout_s=60.0)
            if db.is_postgres
            else None
        )

    # --- blocking steps (the runtime's threads) ---------------------------------------------------------------

    def start(self, task_ids: Sequence[str]) -> list[Execution]:
        """Claim what of `task_ids` is still queued and due (one statement for all), and choose each one's
        first deployment. Tasks that cannot start (model gone, nothing available) are settled here."""
        started = []
        for claim in transitions.claim(self.db, task_ids, self._lease_for):
            if claim.model not in self.config.models:
                error = {"type": "invalid_request", "message": f"model '{claim.model}' is no longer configured"}
                transitions.finish(
                    self.db, claim, None, status=TaskStatus.FAILED, result=None, error=error, then=self.finished
                )
                continue
            earlier = self._earlier(claim) if claim.attempt_count else []
            route = self.router.route(claim.type, claim.model, claim.input, claim.options.get("provider"), earlier)
            execution = Execution(
                claim,
                route,
                None,
                max_attempts=int(claim.options.get("max_attempts") or self.settings.default_max_attempts),
                timeout_s=float(claim.options.get("timeout_s") or self.settings.default_timeout_s),
            )
            execution.gate = self.gates.for_claim(claim)
            if execution.gate is not None and execution.gate.request_pending:
                started.append(execution)  # no deployment is taken before its request has passed (guard_request)
            elif self.choose_next(execution):
                started.append(execution)
        return started

    def choose_next(self, ex: Execution) -> bool:
        """Pick the deployment for the next call; False when the task was handed back (nothing can take it now)
        or failed for having waited too long."""
        choice = self.router.choose(ex.route, lease_s=self._lease_s(ex.timeout_s))
        if isinstance(choice, Unavailable):
            self._wait_for_deployment(ex.claim, choice)
            return False
        if ex.choice is not None and ex.choice.model != choice.model:
            # The route moved on (its model's deployments failed, or an error with a fallback of its own).
            metrics.fell_back(ex.choice.model, choice.model)
        ex.choice = choice
        return True

    def settle(self, ex: Execution, outcome: Outcome) -> float | None:
        """Record a call's end. None: the task is finished (or no longer ours); else the seconds to wait
        before `choose_next` and the next call."""
        assert ex.choice is not None
        choice, claim = ex.choice, ex.claim
        usage = outcome.result.usage if outcome.result else Usage()
        self.router.finish(
            choice, _health_outcome(outcome), outcome.latency_ms, usage.input_tokens + usage.output_tokens
        )
        metrics.attempt_ended(
            outcome.deployment.provider,
            outcome.deployment.name,
            outcome.model,
            outcome.error.error_type if outcome.error else None,
            outcome.latency_ms / 1000.0,
            usage.input_tokens,
            usage.output_tokens,
            outcome.cost,
            claim.tenant_id,
        )
        if outcome.failure is not None:
            transitions.finish(
                self.db,
                claim,
                outcome.record(),
                status=TaskStatus.FAILED,
                result=None,
                error=outcome.failure,
                then=self.finished,
                group=self.finishes,
            )
            return None
        if outcome.error is None:
            assert outcome.result is not None
            result = dict(outcome.result.output)
            result["model"] = outcome.model
            result["provider"] = outcome.deployment.provider
            result["provider_model"] = outcome.result.provider_model or outcome.deployment.model
            transitions.finish(
                self.db,
                claim,
                outcome.record(),
                status=TaskStatus.SUCCEEDED,
                result=result,
                error=None,
                then=self.finished,
                group=self.finishes,
            )
            return None
        error = outcome.error
        ex.route.failed_on(self.config, choice.model, choice.deployment.name, error.error_type)
        # A context-length or content-policy error fails the task unless the route found a fallback for it.
        moved_on = ex.route.model != choice.model
        if (not error.retryable and not moved_on) or outcome.n >= ex.max_attempts:
            failure = {"type": error.error_type, "message": error.message}
            transitions.finish(
                self.db,
                claim,
                outcome.record(),
                status=TaskStatus.FAILED,
                result=None,
                error=failure,
                then=self.finished,
                group=self.finishes,
            )
            return None
        wait = 0.0
        if not self.router.fails_over_at_once(ex.route):
            # Only the deployments that failed are left: give them time (and what they asked for).
            base, cap = self.settings.retry_base_s, self.settings.retry_max_s
            wait = backoff_s(outcome.n, base_s=base, max_s=cap, retry_after_s=error.retry_after_s)
        durable = wait > self.settings.inline_retry_max_s
        canceled = transitions.record_retry(
            self.db, claim, outcome.record(), wait, durable=durable, lease_s=self._lease_s(ex.timeout_s)
        )
        if canceled is None:
            return None
        if canceled:
            if durable:
                transitions.cancel_released(self.db, claim)  # released already; canceled as a queued task is
            else:
                transitions.finish(
                    self.db,
                    claim,
                    None,
                    status=TaskStatus.CANCELED,
                    result=None,
                    error=transitions.CANCELED_ERROR,
                    then=self.finished,
                )
            return None
        if durable:
            return None
        ex.n = outcome.n + 1
        return wait

    def hand_back(self, ex: Execution) -> None:
        """Give a claimed task back at shutdown (its call abandoned) so another worker takes it at once."""
        if self.dispatch is not None:
            transitions.hand_back(self.db, self.dispatch, ex.claim)

    # --- the call (the event loop) ----------------------------------------------------------------------------

    async def guard_request(self, ex: Execution, step: Step) -> bool:
        """The request gate, before any provider call, then the first deployment's choice. False when the
        task ended here (blocked, or its moderation model away with `when_unavailable: block`) or was handed
        back (nothing can take it now)."""
        gate = ex.gate
        if gate is None or not gate.request_pending:
            return True
        failure = await gate.check_request(step)
        if failure is not None:
            await step(partial(self._fail, ex.claim, failure))
            return False
        return bool(await step(self.choose_next, ex))

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
                _invoke(adapter, claim.type, deployment.model, claim.input, ex.timeout_s, on_delta if stream else None),
                config=self.config,
                deployment=deployment,
                task_type=claim.type,
                task_id=claim.task_id,
                attempt=n,
            )
        except ProviderError as exc:
            if chunks:
                # Listeners have text already: another attempt would send it again. The task fails instead.
                exc = ProviderError(
                    "stream_interrupted",
                    f"the stream broke after {chunks} chunks were sent: {exc.message}",
                    retryable=False,
                    status_code=exc.status_code,
                )
            return Outcome(deployment, model, n, started_at, _ms_since(t0), error=exc, batch=batch)
        except Exception as exc:  # an adapter bug must fail the attempt, not the loop
            log.exception("adapter_crashed", task_id=claim.task_id, provider=deployment.provider)
            err = ProviderError("provider_error", f"{type(exc).__name__}: {exc}", retryable=False)
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
            adapter, claim.type, deployment.model, claim.input, ex.timeout_s, watch.on_delta if watch else None
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
                    exc = ProviderError(
                        "stream_interrupted",
                        f"the stream broke after {watch.released} chunks were sent: {exc.message}",
                        retryable=False,
                        status_code=exc.status_code,
                    )
            return Outcome(deployment, model, n, started_at, _ms_since(t0), error=exc, batch=batch)
        except Exception as exc:  # an adapter bug must fail the attempt, not the loop
            if watch is not None:
                watch.abandon()
            log.exception("adapter_crashed", task_id=claim.task_id, provider=deployment.provider)
            err = ProviderError("provider_error", f"{type(exc).__name__}: {exc}", retryable=False)
            return Outcome(deployment, model, n, started_at, _ms_since(t0), error=err, batch=batch)
        latency = _ms_since(t0)
        failure = await watch.finish() if watch is not None else await gate.check_response(result.output, step)
        if failure is None:
            return Outcome(deployment, model, n, started_at, latency, result=result, batch=batch)
        error = ProviderError(failure["type"], failure["message"], retryable=False)
        return Outcome(deployment, model, n, started_at, latency, result, error, batch, failure)

    # --- helpers ----------------------------------------------------------------------------------------------

    def _fail(self, claim: Claim, error: dict[str, Any]) -> None:
        transitions.finish(self.db, claim, None, status=TaskStatus.FAILED, result=None, error=error, then=self.finished)

    def _wait_for_deployment(self, claim: Claim, unavailable: Unavailable) -> None:
        """Hand the task back with a due time, no attempt made, or fail it once it has waited longer than
        allowed."""
        now = utcnow()
        timeout = self.settings.unavailable_timeout_s
        if claim.created_at is not None and (now - claim.created_at).total_seconds() > timeout:
            error = {"type": "unavailable", "message": f"{unavailable.reason} (waited {timeout:.0f}s)"}
            transitions.finish(
                self.db, claim, None, status=TaskStatus.FAILED, result=None, error=error, then=self.finished
            )
            return
        transitions.release(self.db, claim, unavailable.wait_s, unavailable.reason)

    def _earlier(self, claim: Claim) -> list[Earlier]:
        """The task's recorded attempts, to pick its route up where it was."""
        with self.db.sessions() as session:
            rows = session.execute(
                select(Attempt.model, Attempt.deployment, Attempt.status, Attempt.error_type)
                .where(Attempt.task_id == claim.task_id)
                .order_by(Attempt.n)
            )
            return [Earlier(r.model or claim.model, r.deployment, r.status == "succeeded", r.error_type) for r in rows]

    def _lease_s(self, timeout_s: float | None) -> float:
        return float(timeout_s or self.settings.default_timeout_s) + self.settings.lease_grace_s

    def _lease_for(self, options: dict[str, Any]) -> float:
        return self._lease_s(options.get("timeout_s"))


async def _invoke(
    adapter: ProviderAdapter,
    task_type: str,
    model: str,
    request: dict[str, Any],
    timeout_s: float,
    on_delta: Callable[[str], None] | None,
) -> CallResult:
    """The adapter's async method for the task type."""
    if task_type == "chat":
        return await adapter.achat(model, request, timeout_s, on_delta)
    if task_type == "embed":
        return await adapter.aembed(model, request, timeout_s)
    if task_type == "moderate":
        return await adapter.amoderate(model, request, timeout_s)
    if task_type == "predict":
        return await adapter.apredict(model, request, timeout_s)
    raise ProviderError("invalid_request", f"{task_type} tasks are not served yet", retryable=False)


def _finished_id(finish: transitions.FirstFinish) -> str:
    return finish.claim.task_id


def _health_outcome(outcome: Outcome) -> str | None:
    """What an attempt says of its deployment: failures another try could fix count against it; the
    caller's own mistakes (a 400, a prompt too long) do not; an answer a guardrail stopped was served well."""
    if outcome.error is None or outcome.failure is not None:
        return "ok"
    if outcome.error.retryable or outcome.error.error_type == "stream_interrupted":
        return "fail"
    return None


async def _default_step(fn: Callable[..., Any], *args: Any) -> Any:
    """Blocking work of a gate on the loop's default threads (for a caller with no step threads of its own)."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def _ms_since(t0: float) -> int:
    return int((time.perf_counter() - t0) * 1000)
