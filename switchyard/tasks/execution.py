"""Running a task on a worker: claim it, call providers attempt by attempt, record every attempt, finish once.

Each step is its own short transaction, so a killed worker leaves at most a lease that the sweeper reclaims.
Every write after the claim is conditional on still holding it (`claim_id`): a worker whose lease was
taken over cannot overwrite the result of the one that took it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Update, insert, select, update
from sqlalchemy.orm import Session

from switchyard.core.config import AppConfig, Deployment
from switchyard.core.db import Database
from switchyard.core.errors import ProviderError
from switchyard.core.ids import new_id
from switchyard.core.models import ATTEMPTS, Attempt, Task, utcnow
from switchyard.events.bus import delta_event
from switchyard.events.log import append_event
from switchyard.providers.base import CallResult, Usage
from switchyard.providers.pricing import cost_usd
from switchyard.providers.registry import ProviderSet
from switchyard.providers.router import Choice, Earlier, Router, Unavailable, backoff_s
from switchyard.settings import Settings
from switchyard.tasks.service import RunAdvancer
from switchyard.tasks.views import task_view

log = structlog.get_logger(__name__)

# Publishes an event that is not stored (a `task.delta`) to the listeners of a tenant.
DeltaSink = Callable[[str, dict[str, Any]], None]


@dataclass
class Claim:
    """What the worker holding a task needs to run it."""

    task_id: str
    claim_id: str
    tenant_id: str
    type: str
    model: str
    input: dict[str, Any]
    options: dict[str, Any]
    attempt_count: int
    run_id: str | None = None
    step_id: str | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class Outcome:
    """One finished provider call, successful or not."""

    deployment: Deployment
    model: str  # the logical model it was made for (a fallback's, maybe)
    n: int
    started_at: datetime
    latency_ms: int
    result: CallResult | None = None
    error: ProviderError | None = None

    @property
    def cost(self) -> float:
        return cost_usd(self.result.usage, self.deployment.price) if self.result else 0.0


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
    ) -> None:
        self.settings = settings
        self.config = config
        self.db = db
        self.providers = providers
        self.router = router
        # Asked to advance a workflow run when one of its tasks finishes.
        self.dispatcher = dispatcher
        # Told (after the commit) when a task reaches its final state, with the task as the API shows it:
        # synchronous callers wait on it.
        self.on_finished = on_finished
        # Where a streaming chat task's text chunks go as they arrive (None: nobody can listen, do not stream).
        self.deltas = deltas

    # --- the whole run ----------------------------------------------------------------------------------------

    def run(self, task_id: str) -> None:
        claim = self.claim(task_id)
        if claim is None:
            return  # a duplicate delivery, a canceled task, or not yet due: someone else owns it or nobody should
        if claim.model not in self.config.models:
            self.finish_failed(
                claim, None, {"type": "invalid_request", "message": f"model '{claim.model}' is no longer configured"}
            )
            return
        max_attempts = int(claim.options.get("max_attempts") or self.settings.default_max_attempts)
        timeout_s = float(claim.options.get("timeout_s") or self.settings.default_timeout_s)
        earlier = self._earlier(claim) if claim.attempt_count else []
        route = self.router.route(claim.type, claim.model, claim.input, claim.options.get("provider"), earlier)
        while True:
            n = claim.attempt_count + 1
            choice = self.router.choose(route, lease_s=self._lease_s(timeout_s))
            if isinstance(choice, Unavailable):
                self.wait_for_deployment(claim, choice)
                return
            outcome = self.call(claim, choice, n, timeout_s)
            usage = outcome.result.usage if outcome.result else Usage()
            self.router.finish(
                choice, _health_outcome(outcome), outcome.latency_ms, usage.input_tokens + usage.output_tokens
            )
            if outcome.error is None:
                self.finish_succeeded(claim, outcome)
                return
            error = outcome.error
            route.failed_on(self.config, choice.model, choice.deployment.name, error.error_type)
            # A context-length or content-policy error fails the task unless the route found a fallback for it.
            moved_on = route.model != choice.model
            if (not error.retryable and not moved_on) or n >= max_attempts:
                self.finish_failed(claim, outcome, {"type": error.error_type, "message": error.message})
                return
            wait = 0.0
            if not self.router.fails_over_at_once(route):
                # Only the deployments that failed are left: give them time (and what they asked for).
                base, cap = self.settings.retry_base_s, self.settings.retry_max_s
                wait = backoff_s(n, base_s=base, max_s=cap, retry_after_s=error.retry_after_s)
            keep_going = self.record_retry(claim, outcome, wait, timeout_s)
            if not keep_going:
                return
            time.sleep(wait)

    def call(self, claim: Claim, choice: Choice, n: int, timeout_s: float) -> Outcome:
        deployment, model = choice.deployment, choice.model
        adapter = self.providers.get(deployment.provider)
        method = {
            "chat": adapter.chat,
            "embed": adapter.embed,
            "moderate": adapter.moderate,
            "predict": adapter.predict,
        }.get(claim.type)
        started_at = utcnow()
        t0 = time.perf_counter()
        chunks = 0

        def on_delta(text: str) -> None:
            nonlocal chunks
            assert self.deltas is not None
            event = delta_event(
                task_id=claim.task_id, run_id=claim.run_id, step_id=claim.step_id, index=chunks, content=text
            )
            self.deltas(claim.tenant_id, event)
            chunks += 1

        try:
            if method is None:
                raise ProviderError("invalid_request", f"{claim.type} tasks are not served yet", retryable=False)
            if claim.type == "chat" and claim.options.get("stream") and self.deltas is not None:
                result = adapter.chat(deployment.model, claim.input, timeout_s, on_delta)
            else:
                result = method(deployment.model, claim.input, timeout_s)
        except ProviderError as exc:
            if chunks:
                # Listeners have text already: another attempt would send it again. The task fails instead.
                exc = ProviderError(
                    "stream_interrupted",
                    f"the stream broke after {chunks} chunks were sent: {exc.message}",
                    retryable=False,
                    status_code=exc.status_code,
                )
            return Outcome(deployment, model, n, started_at, _ms_since(t0), error=exc)
        except Exception as exc:  # an adapter bug must fail the attempt, not kill the worker thread
            log.exception("adapter_crashed", task_id=claim.task_id, provider=deployment.provider)
            err = ProviderError("provider_error", f"{type(exc).__name__}: {exc}", retryable=False)
            return Outcome(deployment, model, n, started_at, _ms_since(t0), error=err)
        return Outcome(deployment, model, n, started_at, _ms_since(t0), result=result)

    # --- transactions -----------------------------------------------------------------------------------------

    def claim(self, task_id: str) -> Claim | None:
        """queued -> running, if it still is queued and due; the lease covers one provider call."""
        now = utcnow()
        claim_id = new_id("clm")
        with self.db.transaction() as tx:
            row = tx.session.execute(
                _task_update()
                .where(
                    Task.id == task_id,
                    Task.status == "queued",
                    Task.cancel_requested.is_(False),
                    (Task.due_at.is_(None)) | (Task.due_at <= now),
                )
                .values(
                    status="running",
                    claim_id=claim_id,
                    lease_expires_at=now + timedelta(seconds=self._lease_s(None)),
                    started_at=now,
                    due_at=None,
                )
                .returning(
                    Task.tenant_id,
                    Task.type,
                    Task.model,
                    Task.input,
                    Task.options,
                    Task.attempt_count,
                    Task.run_id,
                    Task.step_id,
                    Task.created_at,
                )
            ).first()
            if row is None:
                return None
            claim = Claim(
                task_id,
                claim_id,
                row.tenant_id,
                row.type,
                row.model,
                row.input,
                row.options,
                row.attempt_count,
                row.run_id,
                row.step_id,
                row.created_at,
            )
            # A per-task timeout longer than the default needs a longer lease.
            if claim.options.get("timeout_s", self.settings.default_timeout_s) != self.settings.default_timeout_s:
                tx.session.execute(
                    _task_update()
                    .where(Task.id == task_id)
                    .values(lease_expires_at=now + timedelta(seconds=self._lease_s(claim.options["timeout_s"])))
                )
            _claim_event(
                tx.session,
                claim,
                "task.started",
                {"id": task_id, "status": "running", "attempt": claim.attempt_count + 1},
            )
        return claim

    def record_retry(self, claim: Claim, outcome: Outcome, wait_s: float, timeout_s: float) -> bool:
        """Record a failed attempt that will be retried. A short wait keeps the claim (the caller sleeps);
        a long one releases the task with a due time in the database. False: stop here."""
        assert outcome.error is not None
        now = utcnow()
        durable = wait_s > self.settings.inline_retry_max_s
        with self.db.transaction() as tx:
            values: dict[str, Any] = {"attempt_count": outcome.n}
            if durable:
                values.update(
                    status="queued",
                    claim_id=None,
                    lease_expires_at=None,
                    due_at=now + timedelta(seconds=wait_s),
                    published_at=None,
                )
            else:
                values["lease_expires_at"] = now + timedelta(seconds=wait_s + self._lease_s(timeout_s))
            row = tx.session.execute(
                _task_update()
                .where(Task.id == claim.task_id, Task.claim_id == claim.claim_id, Task.status == "running")
                .values(**values)
                .returning(Task.cancel_requested)
            ).first()
            if row is None:
                log.warning("lease_lost", task_id=claim.task_id)
                tx.session.rollback()
                return False
            self._insert_attempt(tx.session, claim, outcome)
            _claim_event(
                tx.session,
                claim,
                "task.retrying",
                {
                    "id": claim.task_id,
                    "attempt": outcome.n,
                    "wait_s": round(wait_s, 3),
                    "error": {"type": outcome.error.error_type, "message": outcome.error.message},
                },
            )
        claim.attempt_count = outcome.n
        if row.cancel_requested:
            if durable:
                # Released already; cancel it the way the API cancels a queued task.
                self._cancel_released(claim)
            else:
                self.finish_canceled(claim)
            return False
        return not durable

    def wait_for_deployment(self, claim: Claim, unavailable: Unavailable) -> None:
        """No deployment can take the call now (breakers open, limits reached): hand the task back with a due
        time, no attempt made, or fail it once it has waited longer than allowed."""
        now = utcnow()
        if (
            claim.created_at is not None
            and (now - claim.created_at).total_seconds() > self.settings.unavailable_timeout_s
        ):
            error = {
                "type": "unavailable",
                "message": f"{unavailable.reason} (waited {self.settings.unavailable_timeout_s:.0f}s)",
            }
            self.finish_failed(claim, None, error)
            return
        with self.db.transaction() as tx:
            row = tx.session.execute(
                _task_update()
                .where(Task.id == claim.task_id, Task.claim_id == claim.claim_id, Task.status == "running")
                .values(
                    status="queued",
                    claim_id=None,
                    lease_expires_at=None,
                    due_at=now + timedelta(seconds=unavailable.wait_s),
                    published_at=None,
                )
                .returning(Task.id)
            ).first()
            if row is None:
                return
            _claim_event(
                tx.session,
                claim,
                "task.retrying",
                {"id": claim.task_id, "wait_s": round(unavailable.wait_s, 3), "reason": unavailable.reason},
            )

    def _earlier(self, claim: Claim) -> list[Earlier]:
        """The task's recorded attempts, to pick its route up where it was."""
        with self.db.sessions() as session:
            rows = session.execute(
                select(Attempt.model, Attempt.deployment, Attempt.status, Attempt.error_type)
                .where(Attempt.task_id == claim.task_id)
                .order_by(Attempt.n)
            )
            return [Earlier(r.model or claim.model, r.deployment, r.status == "succeeded", r.error_type) for r in rows]

    def finish_succeeded(self, claim: Claim, outcome: Outcome) -> None:
        assert outcome.result is not None
        usage = outcome.result.usage.as_dict()
        result = dict(outcome.result.output)
        result["model"] = outcome.model
        result["provider"] = outcome.deployment.provider
        result["provider_model"] = outcome.result.provider_model or outcome.deployment.model
        self._finish(claim, outcome, status="succeeded", result=result, error=None, usage=usage)

    def finish_failed(self, claim: Claim, outcome: Outcome | None, error: dict[str, Any]) -> None:
        self._finish(claim, outcome, status="failed", result=None, error=error, usage=None)

    def finish_canceled(self, claim: Claim) -> None:
        self._finish(
            claim,
            None,
            status="canceled",
            result=None,
            error={"type": "canceled", "message": "canceled by request"},
            usage=None,
        )

    def _finish(
        self,
        claim: Claim,
        outcome: Outcome | None,
        *,
        status: str,
        result: dict[str, Any] | None,
        error: dict[str, Any] | None,
        usage: dict[str, float] | None,
    ) -> None:
        """Write the final state once, with the last attempt, the totals and the terminal event."""
        with self.db.transaction() as tx:
            session = tx.session
            attempts: list[Attempt]
            if outcome is not None and claim.attempt_count == 0:
                # The common case: the first call settled it, so there is nothing to read back.
                attempts = [self._insert_attempt(session, claim, outcome)]
            else:
                if outcome is not None:
                    self._insert_attempt(session, claim, outcome)
                attempts = list(session.scalars(select(Attempt).where(Attempt.task_id == claim.task_id)))
            totals = _totals(attempts)
            now = utcnow()
            held = (Task.id == claim.task_id) & (Task.claim_id == claim.claim_id) & (Task.status == "running")
            values = {
                "result": result,
                "error": error,
                "usage": usage or totals["usage"],
                "cost_usd": totals["cost"],
                "finished_at": now,
                "lease_expires_at": None,
                "attempt_count": outcome.n if outcome else claim.attempt_count,
            }
            # A cancel that arrived while the last call was in flight wins over its result.
            task = session.scalar(
                _task_update()
                .where(held, Task.cancel_requested.is_(False))
                .values(status=status, **values)
                .returning(Task)
            )
            if task is None:
                task = session.scalar(
                    _task_update()
                    .where(held)
                    .values(
                        status="canceled",
                        **{**values, "result": None, "error": {"type": "canceled", "message": "canceled by request"}},
                    )
                    .returning(Task)
                )
            if task is None:
                log.warning("lease_lost", task_id=claim.task_id)
                session.rollback()
                return
            view = task_view(task, attempts)
            if self.on_finished is not None:
                notify, task_id = self.on_finished, claim.task_id
                tx.after_commit(lambda: notify(task_id, view))
            if task.run_id is not None and self.dispatcher is not None:
                advancer, run_id = self.dispatcher, task.run_id
                tx.after_commit(lambda: advancer.publish_advance(run_id))
            _claim_event(
                session,
                claim,
                f"task.{task.status}",
                view,
            )

    def _cancel_released(self, claim: Claim) -> None:
        with self.db.transaction() as tx:
            task = tx.session.scalar(
                _task_update()
                .where(Task.id == claim.task_id, Task.status == "queued")
                .values(
                    status="canceled",
                    finished_at=utcnow(),
                    due_at=None,
                    error={"type": "canceled", "message": "canceled by request"},
                )
                .returning(Task)
            )
            if task is not None:
                attempts = list(tx.session.scalars(select(Attempt).where(Attempt.task_id == claim.task_id)))
                _claim_event(
                    tx.session,
                    claim,
                    "task.canceled",
                    task_view(task, attempts),
                )

    # --- helpers ----------------------------------------------------------------------------------------------

    def _lease_s(self, timeout_s: float | None) -> float:
        return float(timeout_s or self.settings.default_timeout_s) + self.settings.lease_grace_s

    @staticmethod
    def _insert_attempt(session: Session, claim: Claim, outcome: Outcome) -> Attempt:
        usage = outcome.result.usage if outcome.result else Usage()
        error = outcome.error
        values = dict(
            task_id=claim.task_id,
            n=outcome.n,
            model=outcome.model,
            provider=outcome.deployment.provider,
            deployment=outcome.deployment.name,
            provider_model=(outcome.result.provider_model if outcome.result else "") or outcome.deployment.model,
            status="succeeded" if error is None else "failed",
            error_type=error.error_type if error else None,
            error_message=error.message if error else None,
            status_code=error.status_code if error else None,
            latency_ms=outcome.latency_ms,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cached_input_tokens=usage.cached_input_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            predictions=usage.predictions,
            compute_ms=usage.compute_ms,
            cost_usd=outcome.cost,
            started_at=outcome.started_at,
            finished_at=utcnow(),
        )
        session.execute(insert(ATTEMPTS).values(**values))
        return Attempt(**values)  # transient: for the task's view, never added to the session


def _totals(attempts: list[Attempt]) -> dict[str, Any]:
    """Usage and cost summed over every attempt (failed attempts can still cost money)."""
    usage = Usage(
        input_tokens=sum(a.input_tokens for a in attempts),
        output_tokens=sum(a.output_tokens for a in attempts),
        cached_input_tokens=sum(a.cached_input_tokens for a in attempts),
        cache_write_tokens=sum(a.cache_write_tokens for a in attempts),
        predictions=sum(a.predictions for a in attempts),
        compute_ms=sum(a.compute_ms for a in attempts),
    )
    return {"usage": usage.as_dict(), "cost": sum(a.cost_usd for a in attempts)}


def _task_update() -> Update:
    """A conditional UPDATE of tasks. The executor's session holds no Task objects that need keeping in step,
    so the ORM's session synchronisation is skipped."""
    return update(Task).execution_options(synchronize_session=False)


def _claim_event(session: Session, claim: Claim, type: str, data: dict[str, Any]) -> None:
    """An event of the claimed task (with its run and step, when it is a workflow step's)."""
    append_event(
        session,
        tenant_id=claim.tenant_id,
        type=type,
        task_id=claim.task_id,
        run_id=claim.run_id,
        step_id=claim.step_id,
        data=data,
    )


def _health_outcome(outcome: Outcome) -> str | None:
    """What an attempt says of its deployment: failures another try could fix count against it; the
    caller's own mistakes (a 400, a prompt too long) do not."""
    if outcome.error is None:
        return "ok"
    if outcome.error.retryable or outcome.error.error_type == "stream_interrupted":
        return "fail"
    return None


def _ms_since(t0: float) -> int:
    return int((time.perf_counter() - t0) * 1000)
