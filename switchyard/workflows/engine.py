"""Durable execution of runs. Each step becomes tasks (one, or one per `for_each` item) that the workers run
like any other; when a task of a run finishes, the worker asks for the run to be advanced. `advance` holds
the run's row lock, settles the steps whose tasks are done, schedules the steps that became ready, and
publishes their tasks after commit. It renders no template while it holds the lock: what it needs rendered it
returns as jobs, rendered under the deployment's budget between locked passes (`rendering.py`, `runner.py`). It
is idempotent: the runs' sweep (`workflows/sweeper.py`) calls it again for runs that sat still.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson
import structlog
from pydantic import ValidationError
from sqlalchemy import func, select

from switchyard.core.config import AppConfig
from switchyard.core.db import Tx, lock_for_update
from switchyard.core.errors import AppError, BudgetExceeded, InvalidRequest, ServiceUnavailable
from switchyard.core.models import Run, RunStep, Task, Workflow, utcnow
from switchyard.core.validation import find_unstorable, invalid_request
from switchyard.events.log import append_event
from switchyard.guardrails import pii
from switchyard.ml.images import from_base64, image_inputs
from switchyard.settings import get_settings
from switchyard.tasks.schemas import INPUT_MODELS
from switchyard.tasks.transitions import RunDispatcher, cancel_queued_of_run, enqueue, new_task
from switchyard.tenancy.quotas import repository
from switchyard.tenancy.quotas.estimate import estimate
from switchyard.tenancy.quotas.policy import Policy
from switchyard.tenancy.quotas.service import Quotas
from switchyard.workflows.rendering import Pending, RenderJob, RenderKey, RenderPass, WorkflowLimits, fingerprint
from switchyard.workflows.spec import StepSpec, WorkflowSpec
from switchyard.workflows.templates import TemplateError, truthy
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
    def __init__(
        self,
        config: AppConfig,
        dispatcher: RunDispatcher,
        quotas: Quotas | None = None,
        limits: WorkflowLimits | None = None,
    ) -> None:
        self.config = config
        self.limits = limits or WorkflowLimits()
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

    def advance(self, tx: Tx, run_id: str, rendered: RenderPass | None = None) -> list[RenderJob]:
        """One locked pass: settle what finished, schedule what became ready. Templates are not rendered here
        (the lock is held): a value `rendered` lacks becomes a job, returned for the caller to render after
        commit and pass back on the next pass (runner.advance_with_retry). Only the tasks of unfinished steps are
        counted, and a step's tasks are loaded once, when it settles."""
        renders = rendered if rendered is not None else RenderPass()
        renders.jobs.clear()
        session = tx.session
        lock_for_update(session)
        run = session.scalar(select(Run).where(Run.id == run_id).with_for_update())
        if run is None or run.status in RUN_TERMINAL:
            return []
        workflow = session.get(Workflow, run.workflow_id)
        assert workflow is not None
        spec, graph = self.compile(workflow)
        by_id = {s.id: s for s in spec.steps}
        steps = {r.step_id: r for r in session.scalars(select(RunStep).where(RunStep.run_id == run_id))}
        counts = _count_tasks(tx, run_id, steps)
        done_before = sum(1 for r in steps.values() if r.status in STEP_TERMINAL)
        if run.status == "queued":
            run.status, run.started_at = "running", utcnow()
            self._event(tx, run, "run.started", {"id": run.id, "status": "running"})

        c = _Advance(tx, run, graph, by_id, steps, counts, renders)
        settled = False
        while True:  # settling makes steps ready; scheduling can settle steps at once (skips, bad templates)
            changed = self._settle(c)
            settled = settled or changed
            if self._fail_if_needed(tx, run, spec, steps):
                break
            scheduled = self._schedule(c)
            settled = settled or scheduled
            if not (scheduled or changed):
                break

        # Every task the run ever made counts, earlier generations (before a retry) included: summed by the
        # database; usage (a document per task) is read again only when a step has finished.
        run.cost_usd = float(
            session.scalar(select(func.coalesce(func.sum(Task.cost_usd), 0.0)).where(Task.run_id == run_id)) or 0.0
        )
        done = sum(1 for r in steps.values() if r.status in STEP_TERMINAL)
        if settled or run.usage is None or done == len(steps):
            run.usage = _usage(session.scalars(select(Task.usage).where(Task.run_id == run_id)))
        if run.status == "running" and done == len(steps):
            self._succeed(c, spec)
        elif run.status == "running" and done != done_before:
            self._event(tx, run, "run.progress", {"id": run.id, "progress": {"done": done, "total": len(steps)}})
        run.advanced_at = utcnow()
        return list(renders.jobs.values())

    def _settle(self, c: _Advance) -> bool:
        """Steps whose tasks have all finished take their outcome; for_each steps start their next items."""
        changed = False
        for step_id, row in c.steps.items():
            if row.status not in ("queued", "running"):
                continue
            spec, count = c.by_id[step_id], c.counts[step_id]
            if row.status == "queued" and count.started:
                row.status = "running"
            total = len(row.items) if spec.for_each is not None else 1
            if count.made < total:
                self._start_items(c, spec, row, self._parallel(spec, total) - count.unfinished)
                continue
            if count.unfinished:
                continue
            mine = list(
                c.tx.session.scalars(
                    select(Task)
                    .where(Task.run_id == c.run.id, Task.step_id == step_id, Task.step_generation == row.generation)
                    .order_by(Task.item_index)
                )
            )
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
            self._step_event(c.tx, c.run, row, [t.id for t in mine])
            changed = True
        return changed

    def _parallel(self, spec: StepSpec, total: int) -> int:
        """How many of a step's items run at once: its max_parallel, else the deployment's default."""
        return min(spec.max_parallel or self.limits.default_max_parallel, total)

    def _key(self, c: _Advance, kind: str, step_id: str, index: int = 0) -> RenderKey:
        row = c.steps[step_id]
        return (kind, step_id, row.generation, index, fingerprint(c.steps, c.graph.parents.get(step_id, set())))

    def _schedule(self, c: _Advance) -> bool:
        """Pending steps whose parents have all finished: skip, fail, or start their tasks. A step whose `when`
        or `for_each` is not rendered yet stays pending (its render job is recorded)."""
        changed = False
        for step_id in c.graph.order:
            row, spec = c.steps[step_id], c.by_id[step_id]
            parents = c.graph.parents.get(step_id, set())
            if row.status != "pending" or any(c.steps[p].status not in STEP_TERMINAL for p in parents):
                continue
            if parents and all(c.steps[p].status == "skipped" for p in parents):
                changed = True
                row.started_at = utcnow()
                self._finish_step(
                    c.tx, c.run, row, "skipped", error={"type": "skipped", "message": "its inputs were skipped"}
                )
                continue
            context = _context(c.run, c.steps)
            try:
                when = spec.when is not None and not truthy(
                    c.renders.value(self._key(c, "when", step_id), spec.when, context)
                )
                items = None
                if not when and spec.for_each is not None:
                    items = _storable(
                        c.renders.value(
                            self._key(c, "for_each", step_id), spec.for_each, context, max_items=self.limits.max_items
                        ),
                        "for_each",
                    )
            except Pending:
                continue
            except TemplateError as exc:
                changed = True
                row.started_at = utcnow()
                self._finish_step(c.tx, c.run, row, "failed", error={"type": "template_error", "message": str(exc)})
                continue
            changed = True
            row.started_at = utcnow()
            if when:
                self._finish_step(c.tx, c.run, row, "skipped")
                continue
            if spec.for_each is not None:
                if not isinstance(items, list):
                    message = f"for_each must give a list; '{spec.for_each}' gave {type(items).__name__}"
                    self._finish_step(c.tx, c.run, row, "failed", error={"type": "template_error", "message": message})
                    continue
                row.items = items
                if not items:
                    row.output = []
                    self._finish_step(c.tx, c.run, row, "succeeded")
                    continue
            row.status = "queued"
            self._event(c.tx, c.run, "run.step.started", {"id": c.run.id, "step_id": step_id}, step_id)
            count = len(row.items) if spec.for_each is not None else 1
            if not self._start_items(c, spec, row, self._parallel(spec, count)):
                return True  # refused by a budget or a template: the run's failure policy comes first
        return changed

    def _start_items(self, c: _Advance, spec: StepSpec, row: RunStep, how_many: int) -> bool:
        """Make the tasks for the step's next `how_many` items (a plain step has one item, index 0). Their inputs
        must all be rendered first (else their jobs are recorded and nothing is made: items start in order).
        False when the step failed (a template, a budget's refusal) or a budget could not be checked."""
        count = c.counts[spec.id]
        total = len(row.items) if spec.for_each is not None else 1
        indexes = range(count.made, min(total, count.made + max(0, how_many)))
        if not indexes:
            return True
        context = _context(c.run, c.steps)
        inputs: list[Any] = []
        pending = False
        for index in indexes:
            item_context = {**context, "item": row.items[index]} if spec.for_each is not None else context
            try:
                inputs.append(
                    _storable(c.renders.value(self._key(c, "input", spec.id, index), spec.input, item_context), "input")
                )
            except Pending:
                pending = True
            except TemplateError as exc:
                self._fail_step(c, row, exc)
                return False
        if pending:
            return True
        policy = None
        if self.quotas is not None:
            policy = repository.policy_of_key(c.tx.session, c.run.tenant_id, c.run.key_id, self.quotas.tiers)
        for index, task_input in zip(indexes, inputs, strict=True):
            try:
                parsed = INPUT_MODELS[spec.type].model_validate(task_input)
            except ValidationError as exc:
                message = f"the rendered input is not valid: {invalid_request(exc, 'input').message}"
                self._fail_step(c, row, TemplateError(message))
                return False
            rendered = parsed.model_dump(mode="json", exclude_none=True)
            if spec.type == "predict" and "images" in rendered:
                try:
                    rendered = self._images(spec.model, rendered["images"])
                except TemplateError as exc:
                    self._fail_step(c, row, exc)
                    return False
            task = self._new_task(c.run, spec, row, index, rendered)
            if policy is not None and not self._admit(c.tx, c.run, row, policy, task):
                return False
            c.tx.session.add(task)
            enqueue(c.tx, self.dispatcher, task)
            count.made += 1
            count.unfinished += 1
        return True

    def _fail_step(self, c: _Advance, row: RunStep, exc: TemplateError) -> None:
        self._finish_step(c.tx, c.run, row, "failed", error={"type": "template_error", "message": str(exc)})

    def _new_task(self, run: Run, spec: StepSpec, row: RunStep, index: int, task_input: dict[str, Any]) -> Task:
        options: dict[str, Any] = {"max_attempts": spec.retries + 1}
        if spec.timeout_s is not None:
            options["timeout_s"] = spec.timeout_s
        if spec.guardrails is not None:
            options["guardrails"] = spec.guardrails.model_dump(exclude_none=True)
        # The rendered input (the run's input, earlier steps' outputs) is scrubbed before the task holds it.
        scrubbed = pii.scrub_request(self.config, spec.type, spec.model, task_input, spec.guardrails, restorable=False)
        return new_task(
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

    def _images(self, model: str, images: list[str]) -> dict[str, Any]:
        """A predict step's base64 images as the model's input tensor (the task holds the tensor, as the API's
        tasks do); a bad image fails the step with the reason."""
        settings = get_settings()
        try:
            if len(images) > settings.max_images_per_request:
                raise InvalidRequest(
                    f"at most {settings.max_images_per_request} images a request", param="input.images"
                )
            blobs = from_base64(images, param="input.images")
            return image_inputs(model, self.config.models[model], None, blobs, settings.max_image_pixels)
        except AppError as exc:
            raise TemplateError(f"the rendered input is not valid: {exc.param}: {exc.message}") from None

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

    def _succeed(self, c: _Advance, spec: WorkflowSpec) -> None:
        tx, run, steps = c.tx, c.run, c.steps
        try:
            output = None
            if spec.output is not None:
                key: RenderKey = ("output", "", 0, 0, fingerprint(steps, steps))
                output = _storable(c.renders.value(key, spec.output, _context(run, steps)), "")
        except Pending:
            return  # rendered after this pass commits; the next pass finishes the run
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


def _usage(usages: Iterable[dict[str, Any] | None]) -> dict[str, float]:
    total: dict[str, float] = defaultdict(float)
    for usage in usages:
        for key, value in (usage or {}).items():
            total[key] += value
    return dict(total)


@dataclass
class _StepTasks:
    """The tasks of a step's current generation, counted: made, not yet finished, any taken by a worker."""

    made: int = 0
    unfinished: int = 0
    started: bool = False


@dataclass
class _Advance:
    """The state one locked pass works on."""

    tx: Tx
    run: Run
    graph: Graph
    by_id: dict[str, StepSpec]
    steps: dict[str, RunStep]
    counts: dict[str, _StepTasks]
    renders: RenderPass


def _count_tasks(tx: Tx, run_id: str, steps: dict[str, RunStep]) -> dict[str, _StepTasks]:
    """Per step, its current generation's tasks counted by the database (only for steps that are running)."""
    counts: dict[str, _StepTasks] = defaultdict(_StepTasks)
    active = [sid for sid, row in steps.items() if row.status in ("queued", "running")]
    if not active:
        return counts
    rows = tx.session.execute(
        select(Task.step_id, Task.step_generation, Task.status, func.count())
        .where(Task.run_id == run_id, Task.step_id.in_(active))
        .group_by(Task.step_id, Task.step_generation, Task.status)
    )
    for step_id, generation, status, n in rows:
        if step_id is None or generation != steps[step_id].generation:
            continue
        count = counts[step_id]
        count.made += n
        if status not in TASK_TERMINAL:
            count.unfinished += n
        if status != "queued":
            count.started = True
    return counts
