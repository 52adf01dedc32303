"""Durable execution of runs. Each step becomes tasks (one, or one per `for_each` item) that the workers run
like any other; when a task of a run finishes, the worker asks for the run to be advanced. `advance` holds
the run's row lock, settles the steps whose tasks are done, schedules the steps that became ready, and
publishes their tasks after commit. It is idempotent: the runs' sweep (`workflows/sweeper.py`) calls it again for
runs that sat still.
"""

from __future__ import annotations

from collections import defaultdict
from functools import lru_cache
from typing import Any

import orjson
import structlog
from pydantic import ValidationError
from sqlalchemy import select

from switchyard.core.config import AppConfig
from switchyard.core.db import Tx, lock_for_update
from switchyard.core.errors import BudgetExceeded, ServiceUnavailable
from switchyard.core.models import Run, RunStep, Task, Workflow, utcnow
from switchyard.core.validation import find_unstorable, invalid_request
from switchyard.events.log import append_event
from switchyard.guardrails import pii
from switchyard.tasks.schemas import INPUT_MODELS
from switchyard.tasks.transitions import RunDispatcher, cancel_queued_of_run, enqueue, new_task
from switchyard.tenancy.quotas import repository
from switchyard.tenancy.quotas.estimate import estimate
from switchyard.tenancy.quotas.policy import Policy
from switchyard.tenancy.quotas.service import Quotas
from switchyard.workflows.spec import StepSpec, WorkflowSpec
from switchyard.workflows.templates import TemplateError, render_value, truthy
from switchyard.workflows.validation import Graph, ensure_valid

log = structlog.get_logger(__name__)

RUN_TERMINAL = frozenset({"succeeded", "failed", "canceled"})
STEP_TERMINAL = frozenset({"succeeded", "failed", "skipped", "canceled"})
TASK_TERMINAL = frozenset({"succeeded", "failed", "canceled"})
CANCELED = {"type": "canceled", "message": "canceled"}


@lru_cache(maxsize=256)
def _compiled(spec_json: bytes, models: tuple[tuple[str, str], ...]) -> tuple[WorkflowSpec, Graph]:
    spec = WorkflowSpec.model_validate(orjson.loads(spec_json))
    return spec, ensure_valid(spec, dict(models))


class Engine:
    def __init__(self, config: AppConfig, dispatcher: RunDispatcher, quotas: Quotas | None = None) -> None:
        self.config = config
        self.dispatcher = dispatcher
        # Steps draw on the budgets of the key that started the run (and its tenant).
        self.quotas = quotas
        self._models = tuple(sorted((n, m.type) for n, m in config.models.items()))

    def compile(self, workflow: Workflow) -> tuple[WorkflowSpec, Graph]:
        """The definition and its graph (validated once per definition and process)."""
        return _compiled(orjson.dumps(workflow.spec, option=orjson.OPT_SORT_KEYS), self._models)

    # --- lifecycle ----------------------------------------------------------------------------------------------

    def start(self, tx: Tx, run: Run, workflow: Workflow) -> None:
        """Insert the run's steps (all pending) and its `run.queued` event; the first advance follows commit."""
        spec, _ = self.compile(workflow)
        for step in spec.steps:
            tx.session.add(RunStep(run_id=run.id, step_id=step.id, status="pending", generation=0, cost_usd=0.0))
        self._event(tx, run, "run.queued", {"id": run.id, "status": "queued", "workflow": run.workflow})
        self.advance_later(tx, run.id)

    def advance_later(self, tx: Tx, run_id: str) -> None:
        dispatcher = self.dispatcher
        tx.after_commit(lambda: dispatcher.publish_advance(run_id))

    def cancel(self, tx: Tx, run: Run) -> None:
        """Queued steps never run; running tasks are asked to stop; the run is canceled at once."""
        steps = {r.step_id: r for r in tx.session.scalars(select(RunStep).where(RunStep.run_id == run.id))}
        self._stop_unfinished(tx, run, steps)
        run.status, run.finished_at, run.error = "canceled", utcnow(), {"type": "canceled", "message": "canceled"}
        self._event(tx, run, "run.canceled", {"id": run.id, "status": "canceled"})

    def retry(self, tx: Tx, run: Run) -> None:
        """Failed and canceled steps (and the steps skipped because of them) run again; succeeded outputs stay."""
        for row in tx.session.scalars(select(RunStep).where(RunStep.run_id == run.id)):
            if row.status in ("failed", "canceled", "skipped"):
                row.status, row.output, row.error, row.items = "pending", None, None, None
                row.generation += 1
                row.started_at = row.finished_at = None
        run.status, run.error, run.output, run.finished_at = "running", None, None, None
        self._event(tx, run, "run.started", {"id": run.id, "status": "running", "retry": True})
        self.advance_later(tx, run.id)

    # --- advancing ----------------------------------------------------------------------------------------------

    def advance(self, tx: Tx, run_id: str) -> None:
        session = tx.session
        lock_for_update(session)
        run = session.scalar(select(Run).where(Run.id == run_id).with_for_update())
        if run is None or run.status in RUN_TERMINAL:
            return
        workflow = session.get(Workflow, run.workflow_id)
        assert workflow is not None
        spec, graph = self.compile(workflow)
        by_id = {s.id: s for s in spec.steps}
        steps = {r.step_id: r for r in session.scalars(select(RunStep).where(RunStep.run_id == run_id))}
        every = list(session.scalars(select(Task).where(Task.run_id == run_id).order_by(Task.item_index)))
        tasks: dict[str, list[Task]] = defaultdict(list)  # the current generation of each step
        for task in every:
            if task.step_id in steps and task.step_generation == steps[task.step_id].generation:
                tasks[task.step_id].append(task)
        done_before = sum(1 for r in steps.values() if r.status in STEP_TERMINAL)
        if run.status == "queued":
            run.status, run.started_at = "running", utcnow()
            self._event(tx, run, "run.started", {"id": run.id, "status": "running"})

        while True:  # settling makes steps ready; scheduling can settle steps at once (skips, bad templates)
            changed = self._settle(tx, run, by_id, steps, tasks)
            if self._fail_if_needed(tx, run, spec, steps):
                break
            if not (self._schedule(tx, run, graph, by_id, steps, tasks) or changed):
                break

        # Every task the run ever made counts, earlier generations (before a retry) included.
        run.cost_usd = sum(t.cost_usd for t in every)
        run.usage = _usage(every)
        done = sum(1 for r in steps.values() if r.status in STEP_TERMINAL)
        if run.status == "running" and done == len(steps):
            self._succeed(tx, run, spec, steps)
        elif run.status == "running" and done != done_before:
            self._event(tx, run, "run.progress", {"id": run.id, "progress": {"done": done, "total": len(steps)}})
        run.advanced_at = utcnow()

    def _settle(
        self, tx: Tx, run: Run, by_id: dict[str, StepSpec], steps: dict[str, RunStep], tasks: dict[str, list[Task]]
    ) -> bool:
        """Steps whose tasks have all finished take their outcome; for_each steps start their next items."""
        changed = False
        for step_id, row in steps.items():
            if row.status not in ("queued", "running"):
                continue
            spec, mine = by_id[step_id], tasks.get(step_id, [])
            if row.status == "queued" and any(t.status != "queued" for t in mine):
                row.status = "running"
            total = len(row.items) if spec.for_each is not None else 1
            unfinished = sum(1 for t in mine if t.status not in TASK_TERMINAL)
            if len(mine) < total:
                self._start_items(tx, run, spec, row, steps, tasks, (spec.max_parallel or total) - unfinished)
                continue
            if unfinished:
                continue
            row.cost_usd = sum(t.cost_usd for t in mine)
            row.finished_at = utcnow()
            failed = [t for t in mine if t.status == "failed"]
            if failed:
                row.status, row.error = "failed", failed[0].error or {"type": "failed", "message": "task failed"}
            elif any(t.status == "canceled" for t in mine):
                row.status, row.error = "canceled", CANCELED
            else:
                row.status = "succeeded"
                results = [t.result for t in mine]
                row.output = results if spec.for_each is not None else results[0]
            self._step_event(tx, run, row, [t.id for t in mine])
            changed = True
        return changed

    def _schedule(
        self,
        tx: Tx,
        run: Run,
        graph: Graph,
        by_id: dict[str, StepSpec],
        steps: dict[str, RunStep],
        tasks: dict[str, list[Task]],
    ) -> bool:
        """Pending steps whose parents have all finished: skip, fail, or start their tasks."""
        changed = False
        for step_id in graph.order:
            row, spec = steps[step_id], by_id[step_id]
            parents = graph.parents.get(step_id, set())
            if row.status != "pending" or any(steps[p].status not in STEP_TERMINAL for p in parents):
                continue
            changed = True
            row.started_at = utcnow()
            if parents and all(steps[p].status == "skipped" for p in parents):
                self._finish_step(
                    tx, run, row, "skipped", error={"type": "skipped", "message": "its inputs were skipped"}
                )
                continue
            context = _context(run, steps)
            try:
                if spec.when is not None and not truthy(render_value(spec.when, context)):
                    self._finish_step(tx, run, row, "skipped")
                    continue
                if spec.for_each is not None:
                    items = _storable(render_value(spec.for_each, context), "for_each")
                    if not isinstance(items, list):
                        raise TemplateError(f"for_each must give a list; '{spec.for_each}' gave {type(items).__name__}")
                    row.items = items
                    if not items:
                        row.output = []
                        self._finish_step(tx, run, row, "succeeded")
                        continue
                row.status = "queued"
                self._event(tx, run, "run.step.started", {"id": run.id, "step_id": step_id}, step_id)
                count = len(row.items) if spec.for_each is not None else 1
                if not self._start_items(tx, run, spec, row, steps, tasks, min(spec.max_parallel or count, count)):
                    return True  # refused by a budget: the step failed, the run's failure policy comes first
            except TemplateError as exc:
                self._finish_step(tx, run, row, "failed", error={"type": "template_error", "message": str(exc)})
        return changed

    def _start_items(
        self,
        tx: Tx,
        run: Run,
        spec: StepSpec,
        row: RunStep,
        steps: dict[str, RunStep],
        tasks: dict[str, list[Task]],
        how_many: int,
    ) -> bool:
        """Make the tasks for the step's next `how_many` items (a plain step has one item, index 0); False when
        a budget refused one (the step has failed) or could not be checked."""
        mine = tasks[spec.id]
        total = len(row.items) if spec.for_each is not None else 1
        context = _context(run, steps)
        policy = None
        if self.quotas is not None:
            policy = repository.policy_of_key(tx.session, run.tenant_id, run.key_id, self.quotas.tiers)
        for index in range(len(mine), min(total, len(mine) + max(0, how_many))):
            item_context = {**context, "item": row.items[index]} if spec.for_each is not None else context
            try:
                task_input = _storable(render_value(spec.input, item_context), "input")
                parsed = INPUT_MODELS[spec.type].model_validate(task_input)
            except ValidationError as exc:
                raise TemplateError(
                    f"the rendered input is not valid: {invalid_request(exc, 'input').message}"
                ) from None
            options: dict[str, Any] = {"max_attempts": spec.retries + 1}
            if spec.timeout_s is not None:
                options["timeout_s"] = spec.timeout_s
            if spec.guardrails is not None:
                options["guardrails"] = spec.guardrails.model_dump(exclude_none=True)
            # The rendered input (the run's input, earlier steps' outputs) is scrubbed before the task holds it.
            scrubbed = pii.scrub_request(
                self.config,
                spec.type,
                spec.model,
                parsed.model_dump(mode="json", exclude_none=True),
                spec.guardrails,
                restorable=False,
            )
            task = new_task(
                tenant_id=run.tenant_id,
                type=spec.type,
                model=spec.model,
                input=scrubbed.input,
                options=options,
                guardrails=scrubbed.record,
                run_id=run.id,
                step_id=spec.id,
                item_index=index,
                step_generation=row.generation,
                key_id=run.key_id,
            )
            if policy is not None and not self._admit(tx, run, row, policy, task):
                return False
            tx.session.add(task)
            enqueue(tx, self.dispatcher, task)
            mine.append(task)
        return True

    def _admit(self, tx: Tx, run: Run, row: RunStep, policy: Policy, task: Task) -> bool:
        """Reserve the step task's worst case against the run key's (and tenant's) budgets. Refused, the step
        fails with `budget_exceeded`; with the counters unavailable, the step waits for a later advance."""
        assert self.quotas is not None
        quotas = self.quotas
        est = estimate(self.config, task.type, task.model, task.input, task.options, batch=False)
        try:
            admitted = quotas.admit(quotas.request(policy, task.id, est, requests=False, tasks=False))
        except BudgetExceeded as exc:
            self._finish_step(tx, run, row, "failed", error={"type": exc.type, "message": exc.message})
            return False
        except ServiceUnavailable:
            log.warning("step_admission_unavailable", run_id=run.id, step_id=row.step_id)
            return False
        task.admission = admitted.record
        if admitted.record is not None:
            task_id = task.id
            tx.on_rollback(lambda: quotas.release(task_id))
        return True

    def _fail_if_needed(self, tx: Tx, run: Run, spec: WorkflowSpec, steps: dict[str, RunStep]) -> bool:
        """A failed (or canceled) step whose policy is `fail` fails the run and cancels what has not finished."""
        for step in spec.steps:
            row = steps[step.id]
            if row.status in ("failed", "canceled") and step.on_failure == "fail":
                self._stop_unfinished(tx, run, steps)
                message = (row.error or {}).get("message", row.status)
                run.status, run.finished_at = "failed", utcnow()
                run.error = {
                    "type": "step_failed",
                    "message": f"step '{step.id}' {row.status}: {message}",
                    "step_id": step.id,
                }
                self._event(tx, run, "run.failed", self._view_data(run, steps))
                return True
        return False

    def _stop_unfinished(self, tx: Tx, run: Run, steps: dict[str, RunStep]) -> None:
        for row in steps.values():
            if row.status in STEP_TERMINAL:
                continue
            row.status, row.finished_at, row.error = "canceled", utcnow(), CANCELED
        cancel_queued_of_run(tx, run.id)

    def _succeed(self, tx: Tx, run: Run, spec: WorkflowSpec, steps: dict[str, RunStep]) -> None:
        try:
            output = render_value(spec.output, _context(run, steps)) if spec.output is not None else None
            _storable(output, "")
        except TemplateError as exc:
            run.status, run.finished_at = "failed", utcnow()
            run.error = {"type": "template_error", "message": f"output: {exc}"}
            self._event(tx, run, "run.failed", self._view_data(run, steps))
            return
        run.status, run.finished_at = "succeeded", utcnow()
        run.output = output if isinstance(output, dict) or output is None else {"value": output}
        self._event(tx, run, "run.succeeded", self._view_data(run, steps))

    # --- helpers ------------------------------------------------------------------------------------------------

    def _finish_step(self, tx: Tx, run: Run, row: RunStep, status: str, *, error: dict[str, Any] | None = None) -> None:
        row.status, row.error, row.finished_at = status, error, utcnow()
        self._step_event(tx, run, row, [])

    def _step_event(self, tx: Tx, run: Run, row: RunStep, task_ids: list[str]) -> None:
        data = {
            "id": run.id,
            "step_id": row.step_id,
            "status": row.status,
            "output": row.output,
            "error": row.error,
            "task_ids": task_ids,
        }
        self._event(tx, run, f"run.step.{row.status}", data, row.step_id)

    def _event(self, tx: Tx, run: Run, type: str, data: dict[str, Any], step_id: str | None = None) -> None:
        append_event(tx.session, tenant_id=run.tenant_id, type=type, run_id=run.id, step_id=step_id, data=data)

    def _view_data(self, run: Run, steps: dict[str, RunStep]) -> dict[str, Any]:
        return {
            "id": run.id,
            "status": run.status,
            "output": run.output,
            "error": run.error,
            "cost_usd": run.cost_usd,
            "steps": {k: {"status": v.status, "output": v.output, "error": v.error} for k, v in steps.items()},
        }


def _storable(value: Any, where: str) -> Any:
    """`value`, or a TemplateError when a template made a string Postgres cannot store (`"\\x00"` renders as
    U+0000, which the API's input guard never sees): the step fails with the field named, instead of the run's
    transaction failing at every advance."""
    found = find_unstorable(value, where)
    if found is not None:
        param, problem = found
        raise TemplateError(f"the rendered {param or 'value'} {problem}")
    return value


def _context(run: Run, steps: dict[str, RunStep]) -> dict[str, Any]:
    """What templates see: the run's input and every step's output, status and error."""
    return {
        "input": run.input,
        "steps": {k: {"output": v.output, "status": v.status, "error": v.error} for k, v in steps.items()},
    }


def _usage(tasks: list[Task]) -> dict[str, float]:
    total: dict[str, float] = defaultdict(float)
    for task in tasks:
        for key, value in (task.usage or {}).items():
            total[key] += value
    return dict(total)
