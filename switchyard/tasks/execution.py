"""Running a task on a worker: claim it, call providers attempt by attempt, record every attempt, finish once.

The provider call is awaited on the worker's event loop (`call`, in tasks/calls.py); everything around it — the
claim, routing state in Redis, recording an attempt, the finish — is short blocking work that the runtime runs on
a few threads (`start`, `settle`, `choose_next`). Each state change is its own transition (tasks/transitions.py),
so a killed worker leaves at most a lease that the sweeper reclaims.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from sqlalchemy import select

from switchyard.core.config import AppConfig
from switchyard.core.db import Database
from switchyard.core.group_commit import GroupCommit
from switchyard.core.models import Attempt, utcnow
from switchyard.ml.results import labelled
from switchyard.observability import metrics
from switchyard.providers.base import Usage
from switchyard.providers.registry import ProviderSet
from switchyard.providers.router import Earlier, Router, Unavailable, backoff_s
from switchyard.settings import Settings
from switchyard.tasks import transitions
from switchyard.tasks.calls import DeltaSink, Execution, Outcome, ProviderCalls
from switchyard.tasks.moderation_gate import ModerationGates, Step
from switchyard.tasks.transitions import Claim, Finished, RunAdvancer, TaskStatus

# Execution, Outcome and DeltaSink are defined in calls.py, with the provider call; callers import them from here.
__all__ = ["DeltaSink", "Execution", "Executor", "Outcome"]


class Executor(ProviderCalls):
    """Executes tasks with the resources of one worker process; its provider calls are in tasks/calls.py."""

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
            route = self.router.route(
                claim.type,
                claim.model,
                claim.input,
                claim.options.get("provider"),
                earlier,
                version=claim.options.get("version"),
            )
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
            if claim.type == "predict":
                labelled(self.config.models.get(outcome.model), outcome.deployment, result)
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
