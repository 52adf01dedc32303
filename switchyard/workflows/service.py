"""Workflow use cases of the HTTP edge: register definitions, start, read, list, cancel and retry runs."""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError

from switchyard.audit.service import record
from switchyard.core.config import AppConfig
from switchyard.core.db import Tx, lock_for_update
from switchyard.core.errors import ConfigError, Conflict, InvalidRequest, NotFound
from switchyard.core.ids import new_id
from switchyard.core.models import Run, RunStep, Task, Workflow
from switchyard.core.validation import invalid_request
from switchyard.observability import tracing
from switchyard.webhooks.service import WebhookTarget, object_webhook
from switchyard.workflows.definition_limits import check_shape, load_yaml
from switchyard.workflows.engine import RUN_TERMINAL, Engine
from switchyard.workflows.spec import WorkflowSpec
from switchyard.workflows.validation import ensure_valid


def parse_spec(raw: Any, config: AppConfig) -> WorkflowSpec:
    """A definition from JSON or YAML data, with every problem of its shape, graph and templates named. Blocks
    (it compiles every template): call it off the event loop."""
    if not isinstance(raw, dict):
        raise InvalidRequest("a workflow definition must be an object with 'name' and 'steps'", param="body")
    check_shape(raw)
    try:
        spec = WorkflowSpec.model_validate(raw)
    except ValidationError as exc:
        raise _naming_steps(invalid_request(exc), raw) from None
    ensure_valid(spec, {n: m.type for n, m in config.models.items()})
    return spec


_STEP_PARAM = re.compile(r"^steps\[(\d+)\]")


def _naming_steps(error: InvalidRequest, raw: dict[str, Any]) -> InvalidRequest:
    """The message names each step it mentions by its id too: `steps[3].model (step 'summarize'): ...`."""
    steps = raw.get("steps")
    parts = []
    for part in error.message.split("; "):
        param, sep, message = part.partition(": ")
        match = _STEP_PARAM.match(param)
        if sep and match:
            index = int(match.group(1))
            step = steps[index] if isinstance(steps, list) and index < len(steps) else None
            step_id = step.get("id") if isinstance(step, dict) else None
            if isinstance(step_id, str) and step_id:
                param = f"{param} (step '{step_id}')"
        parts.append(f"{param}{sep}{message}")
    return InvalidRequest("; ".join(parts), param=error.param)


def parse_body(body: bytes, *, yaml_body: bool) -> Any:
    """The definition's data from a request body (YAML without aliases, or JSON; orjson.JSONDecodeError when it
    is not JSON), its size limits checked. Blocks: call it off the event loop."""
    if yaml_body:
        return load_yaml(body)
    return orjson.loads(body)


def register(tx: Tx, config: AppConfig, tenant_id: str | None, raw: Any, *, actor: str | None = None) -> Workflow:
    """Each registration of a name is a new version (for this tenant; None: a shared definition). A tenant's
    registration is recorded in its audit log as done by `actor`."""
    spec = parse_spec(raw, config)
    session = tx.session
    latest = session.scalar(select(func.max(Workflow.version)).where(Workflow.name == spec.name, _owner(tenant_id)))
    workflow = Workflow(
        id=new_id("wf"),
        tenant_id=tenant_id,
        name=spec.name,
        version=(latest or 0) + 1,
        spec=spec.model_dump(mode="json", exclude_none=True),
    )
    session.add(workflow)
    session.flush()
    if tenant_id is not None and actor is not None:
        # The definition itself stays out of the log (prompts can be long, and are the tenant's business).
        after = {"id": workflow.id, "name": workflow.name, "version": workflow.version}
        record(session, tenant_id, actor, "workflow.register", "workflow", workflow.id, after=after)
    return workflow


def load_shared(tx: Tx, config: AppConfig, folder: Path) -> list[Workflow]:
    """Definitions from `folder/*.yaml` (SWITCHYARD_WORKFLOWS_DIR), shared by all tenants; a changed file makes
    a new version. A bad file stops start-up with the file and the problem named. Blocks: call it off the event
    loop."""
    loaded = []
    for path in sorted(folder.glob("*.y*ml")):
        try:
            spec = parse_spec(load_yaml(path.read_bytes()), config)
        except InvalidRequest as exc:
            raise ConfigError(f"{path}: {exc.message}") from None
        current = _latest(tx, None, spec.name)
        if current is not None and current.spec == spec.model_dump(mode="json", exclude_none=True):
            continue
        try:
            with tx.session.begin_nested():
                loaded.append(register(tx, config, None, spec.model_dump(mode="json", exclude_none=True)))
        except IntegrityError:
            pass  # another process registered the same version a moment ago
    return loaded


def _owner(tenant_id: str | None) -> Any:
    return Workflow.tenant_id.is_(None) if tenant_id is None else Workflow.tenant_id == tenant_id


def _latest(tx: Tx, tenant_id: str | None, name: str, version: int | None = None) -> Workflow | None:
    query = select(Workflow).where(Workflow.name == name, _owner(tenant_id))
    if version is not None:
        query = query.where(Workflow.version == version)
    return tx.session.scalar(query.order_by(Workflow.version.desc()).limit(1))


def find(tx: Tx, tenant_id: str, name: str, version: int | None = None) -> Workflow:
    """The tenant's own definition of that name, else the shared one."""
    workflow = _latest(tx, tenant_id, name, version) or _latest(tx, None, name, version)
    if workflow is None:
        suffix = f" version {version}" if version is not None else ""
        raise NotFound(f"no workflow '{name}'{suffix}", param="name")
    return workflow


def workflow_view(workflow: Workflow) -> dict[str, Any]:
    return {
        "id": workflow.id,
        "name": workflow.name,
        "version": workflow.version,
        "shared": workflow.tenant_id is None,
        "created_at": workflow.created_at.isoformat(),
        "definition": workflow.spec,
    }


def list_workflows(tx: Tx, tenant_id: str) -> list[dict[str, Any]]:
    rows = tx.session.scalars(
        select(Workflow)
        .where(or_(Workflow.tenant_id == tenant_id, Workflow.tenant_id.is_(None)))
        .order_by(Workflow.name, Workflow.version.desc())
    )
    latest: dict[tuple[str, bool], Workflow] = {}
    for row in rows:
        latest.setdefault((row.name, row.tenant_id is None), row)
    return [workflow_view(w) for w in latest.values()]


def start_run(
    tx: Tx,
    engine: Engine,
    *,
    tenant_id: str,
    name: str,
    version: int | None,
    input: dict[str, Any],
    webhook: WebhookTarget | None,
    idempotency_key: str | None,
    allow_private_webhooks: bool = False,
    key_id: str | None = None,
) -> tuple[Run, bool]:
    """A queued run and its pending steps; the first advance is published after commit. Replays by key."""
    workflow = find(tx, tenant_id, name, version)
    target = webhook.model_dump(mode="json") if webhook is not None else None
    request_hash = hashlib.sha256(
        orjson.dumps({"w": workflow.id, "input": input, "webhook": target}, option=orjson.OPT_SORT_KEYS)
    ).hexdigest()
    if idempotency_key is not None:
        existing = tx.session.scalar(
            select(Run).where(Run.tenant_id == tenant_id, Run.idempotency_key == idempotency_key)
        )
        if existing is not None:
            if existing.request_hash != request_hash:
                raise Conflict("Idempotency-Key was already used with a different request", param="Idempotency-Key")
            return existing, True
    run = Run(
        id=new_id("run"),
        tenant_id=tenant_id,
        workflow_id=workflow.id,
        workflow=workflow.name,
        version=workflow.version,
        status="queued",
        input=input,
        cost_usd=0.0,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        key_id=key_id,
        traceparent=tracing.current_traceparent(),
    )
    if webhook is not None:
        run.webhook = object_webhook(
            tx, tenant_id, run.id, webhook, allow_private=allow_private_webhooks, param="webhook"
        )
    tx.session.add(run)
    tx.session.flush()
    engine.start(tx, run, workflow)
    return run, False


def _run(tx: Tx, tenant_id: str, run_id: str, *, lock: bool = False) -> Run:
    query = select(Run).where(Run.id == run_id, Run.tenant_id == tenant_id)
    if lock:
        lock_for_update(tx.session)
    run = tx.session.scalar(query.with_for_update() if lock else query)
    if run is None:
        raise NotFound(f"no run '{run_id}'", param="id")
    return run


def run_view(tx: Tx, run: Run) -> dict[str, Any]:
    """What `GET /v1/runs/{id}` answers for `run`: its steps, their tasks and progress."""
    return run_views(tx, [run])[0]


def run_views(tx: Tx, runs: list[Run]) -> list[dict[str, Any]]:
    """The views of `runs` in two queries whatever their number (their steps, then their tasks' ids), so a page
    of runs does not cost two queries per run."""
    if not runs:
        return []
    ids = [r.id for r in runs]
    steps: dict[str, list[RunStep]] = defaultdict(list)
    for step in tx.session.scalars(select(RunStep).where(RunStep.run_id.in_(ids))):
        steps[step.run_id].append(step)
    generation = {(s.run_id, s.step_id): s.generation for group in steps.values() for s in group}
    task_ids: dict[tuple[str, str], list[str]] = defaultdict(list)
    started: set[tuple[str, str]] = set()
    for task_id, run_id, step_id, gen, status in tx.session.execute(
        select(Task.id, Task.run_id, Task.step_id, Task.step_generation, Task.status)
        .where(Task.run_id.in_(ids))
        .order_by(Task.run_id, Task.item_index)
    ):
        if step_id is not None and run_id is not None and gen == generation.get((run_id, step_id)):
            task_ids[(run_id, step_id)].append(task_id)
            if status != "queued":
                started.add((run_id, step_id))
    return [_run_view(run, steps[run.id], task_ids, started) for run in runs]


def _run_view(
    run: Run,
    steps: list[RunStep],
    task_ids: dict[tuple[str, str], list[str]],
    started: set[tuple[str, str]],
) -> dict[str, Any]:
    done = sum(1 for s in steps if s.status in ("succeeded", "failed", "skipped", "canceled"))
    return {
        "id": run.id,
        "workflow": run.workflow,
        "version": run.version,
        "status": run.status,
        "input": run.input,
        "output": run.output,
        "error": run.error,
        "progress": {"done": done, "total": len(steps)},
        "steps": {
            s.step_id: {
                # The engine looks at a step when its tasks finish; between, its tasks tell whether it runs.
                "status": "running" if s.status == "queued" and (run.id, s.step_id) in started else s.status,
                "output": s.output,
                "error": s.error,
                "task_ids": task_ids.get((run.id, s.step_id), []),
                "cost_usd": s.cost_usd,
                "started_at": _iso(s.started_at),
                "finished_at": _iso(s.finished_at),
            }
            for s in steps
        },
        "cost_usd": run.cost_usd,
        "usage": run.usage,
        "created_at": _iso(run.created_at),
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "webhook": run.webhook,
    }


def get_run(tx: Tx, tenant_id: str, run_id: str) -> dict[str, Any]:
    return run_view(tx, _run(tx, tenant_id, run_id))


def list_runs(
    tx: Tx, tenant_id: str, *, workflow: str | None, status: str | None, after: str | None, limit: int
) -> dict[str, Any]:
    query = select(Run).where(Run.tenant_id == tenant_id)
    if workflow:
        query = query.where(Run.workflow == workflow)
    if status:
        query = query.where(Run.status == status)
    if after:
        query = query.where(Run.id < after)
    rows = list(tx.session.scalars(query.order_by(Run.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return {"data": run_views(tx, rows), "next": rows[-1].id if more and rows else None}


def cancel_run(tx: Tx, engine: Engine, tenant_id: str, run_id: str) -> dict[str, Any]:
    run = _run(tx, tenant_id, run_id, lock=True)
    if run.status in RUN_TERMINAL:
        raise Conflict(f"run '{run_id}' already {run.status}", param="id")
    engine.cancel(tx, run)
    tx.session.flush()
    return run_view(tx, run)


def retry_run(tx: Tx, engine: Engine, tenant_id: str, run_id: str) -> dict[str, Any]:
    run = _run(tx, tenant_id, run_id, lock=True)
    if run.status not in ("failed", "canceled"):
        raise Conflict(f"run '{run_id}' is {run.status}; only failed or canceled runs are retried", param="id")
    engine.retry(tx, run)
    tx.session.flush()
    return run_view(tx, run)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
