"""Task use cases of the HTTP edge: create (idempotently), read, list, cancel. No HTTP here; status changes go
through tasks/transitions.py."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

import anyio.to_thread
import orjson
from psycopg_pool import AsyncConnectionPool
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from switchyard.core.config import AppConfig
from switchyard.core.db import Database, Tx
from switchyard.core.errors import Conflict, InvalidRequest, NotFound
from switchyard.core.models import Task, utcnow
from switchyard.core.validation import invalid_request
from switchyard.guardrails import pii
from switchyard.ml.catalog import check_version, signature_for
from switchyard.ml.images import from_base64, image_inputs
from switchyard.ml.signature import Signature, check_inputs
from switchyard.providers.router import candidates
from switchyard.settings import get_settings
from switchyard.tasks import repository, transitions
from switchyard.tasks.schemas import INPUT_MODELS, TaskCreate
from switchyard.tasks.transitions import TERMINAL, Dispatcher, RunAdvancer, enqueue, new_task
from switchyard.tasks.views import task_view
from switchyard.tenancy.quotas.estimate import estimate
from switchyard.tenancy.quotas.policy import Policy
from switchyard.tenancy.quotas.service import Admitted, Quotas, Request
from switchyard.webhooks.service import object_webhook


@dataclass(frozen=True)
class Created:
    task: Task
    replayed: bool
    # The `x-ratelimit-*` headers of the caller's limits (empty when none apply).
    headers: dict[str, str] = field(default_factory=dict)
    # A reversible PII guardrail's placeholders and values, for the caller that restores the answer (never
    # stored: the task holds the placeholders).
    vault: dict[str, str] | None = None


@dataclass(frozen=True)
class Gate:
    """The limits and budgets a submission is admitted against (absent when none apply: no cost at all)."""

    quotas: Quotas
    policy: Policy

    def request(self, config: AppConfig, task: Task) -> Request:
        est = estimate(config, task.type, task.model, task.input, task.options, batch=False)
        return self.quotas.request(self.policy, task.id, est)


def _request_hash(body: TaskCreate, pinned: str | None) -> str:
    canonical = orjson.dumps({"body": body.model_dump(mode="json"), "pinned": pinned}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def validate_input(
    config: AppConfig, signatures: Mapping[str, Signature], body: TaskCreate, pinned: str | None
) -> dict[str, Any]:
    """Check the model, the type, the pinned provider and the input (predict inputs against the model's
    signature); return the normalised input."""
    model = config.models.get(body.model)
    if model is None:
        raise InvalidRequest(f"unknown model '{body.model}'", param="model")
    if model.type != body.type:
        raise InvalidRequest(f"model '{body.model}' serves {model.type} tasks, not {body.type}", param="type")
    if pinned is not None and not candidates(model, pinned):
        providers = sorted({d.provider for d in model.deployments})
        raise InvalidRequest(
            f"model '{body.model}' has no deployment on provider '{pinned}' (it has: {', '.join(providers)})",
            param="options.provider",
        )
    if body.options.version is not None:
        check_version(body.model, model, body.options.version, pinned)
    if body.options.stream and body.type != "chat":
        raise InvalidRequest("only chat tasks can stream", param="options.stream")
    moderation = body.options.guardrails.moderation if body.options.guardrails is not None else None
    if moderation is not None:
        _check_moderation_model(config, moderation.model)
    try:
        parsed = INPUT_MODELS[body.type].model_validate(body.input)
    except ValidationError as exc:
        raise invalid_request(exc, prefix="input") from None
    normalised = parsed.model_dump(mode="json", exclude_none=True)
    if body.type != "predict":
        return normalised
    signature = signature_for(signatures, body.model, body.options.version)
    if "images" in normalised:
        settings = get_settings()
        if len(normalised["images"]) > settings.max_images_per_request:
            raise InvalidRequest(f"at most {settings.max_images_per_request} images a request", param="input.images")
        normalised = image_inputs(
            body.model,
            model,
            signature,
            from_base64(normalised["images"], param="input.images"),
            settings.max_image_pixels,
        )
    if signature is not None:
        check_inputs(signature, normalised["inputs"])
    return normalised


def _check_moderation_model(config: AppConfig, name: str) -> None:
    """A request's moderation guardrail must name a `moderate` model of the config (as the config file's must)."""
    other = config.models.get(name)
    if other is None or other.type != "moderate":
        problem = "an unknown model" if other is None else f"a {other.type} model, not a moderate model"
        raise InvalidRequest(
            f"options.guardrails.moderation.model: '{name}' is {problem}", param="options.guardrails.moderation.model"
        )


@dataclass(frozen=True)
class Submission:
    """A task as a caller submits it: the body and what the request adds to it."""

    tenant_id: str
    body: TaskCreate
    pinned_provider: str | None = None
    idempotency_key: str | None = None
    idempotency_ttl_s: float = 24 * 3600
    allow_private_webhooks: bool = False
    # An id chosen beforehand (a caller that listens to the task's events from the start).
    task_id: str | None = None
    # The key that submits it (recorded on the task: spend is summed by key), and what it is admitted against.
    key_id: str | None = None
    gate: Gate | None = None
    # The caller waits on the call in this process and can restore a reversible PII guardrail's values.
    restorable: bool = False
    # The caller waits for the task (a synchronous endpoint): it is handed to a worker (workers/handoff.py).
    waiting: bool = False


def checked_input(
    config: AppConfig,
    signatures: Mapping[str, Signature],
    body: TaskCreate,
    pinned: str | None,
    *,
    restorable: bool = False,
) -> pii.ScrubbedRequest:
    """The normalised input (`validate_input`) after the request's PII guardrail: what the task row holds."""
    normalised = validate_input(config, signatures, body, pinned)
    return pii.scrub_request(config, body.type, body.model, normalised, body.options.guardrails, restorable=restorable)


def _plain(
    config: AppConfig, signatures: Mapping[str, Signature], sub: Submission
) -> tuple[Task, dict[str, str] | None] | None:
    """The checked task row (and a reversible guardrail's vault) when the submission is the common case (no
    idempotency key, no webhook), which is inserted with one statement; None for the rest, which
    `create_task` inserts in a transaction."""
    if sub.idempotency_key is not None or sub.body.webhook is not None:
        return None
    if sub.body.type == "predict" and "images" in sub.body.input:
        return None  # decoding images is blocking work: on a thread (`submit`), not on the event loop
    pinned = sub.body.options.provider or sub.pinned_provider
    checked = checked_input(config, signatures, sub.body, pinned, restorable=sub.restorable)
    task = _new(
        sub.tenant_id, sub.body, pinned, checked.input, task_id=sub.task_id, key_id=sub.key_id, found=checked.record
    )
    return task, checked.vault


def _admitted(task: Task, admitted: Admitted) -> None:
    task.admission = admitted.record


def submit(
    db: Database, config: AppConfig, signatures: Mapping[str, Signature], dispatcher: Dispatcher, sub: Submission
) -> Created:
    """Validate, admit (limits and budgets), insert and publish a task, committed before this returns."""
    plain = _plain(config, signatures, sub)
    if plain is not None:
        task, vault = plain
        admitted = sub.gate.quotas.admit(sub.gate.request(config, task)) if sub.gate is not None else None
        if admitted is not None:
            _admitted(task, admitted)
        try:
            transitions.create_plain(db, dispatcher, task)
        except BaseException:
            if admitted is not None and admitted.record is not None and sub.gate is not None:
                sub.gate.quotas.release(task.id)
            raise
        return Created(task=task, replayed=False, headers=admitted.headers if admitted else {}, vault=vault)
    with db.transaction() as tx:
        return create_task(
            tx,
            config,
            signatures,
            dispatcher,
            tenant_id=sub.tenant_id,
            body=sub.body,
            pinned_provider=sub.pinned_provider,
            idempotency_key=sub.idempotency_key,
            idempotency_ttl_s=sub.idempotency_ttl_s,
            allow_private_webhooks=sub.allow_private_webhooks,
            task_id=sub.task_id,
            key_id=sub.key_id,
            gate=sub.gate,
            restorable=sub.restorable,
        )


async def submit_async(
    db: Database,
    pool: AsyncConnectionPool | None,
    config: AppConfig,
    signatures: Mapping[str, Signature],
    dispatcher: Dispatcher,
    sub: Submission,
) -> Created:
    """`submit` from an event loop: on Postgres the common case is one statement on `pool`, with no thread;
    the rest runs `submit` on a thread. `dispatcher.publish_task` must not block."""
    plain = _plain(config, signatures, sub) if pool is not None else None
    if pool is not None and plain is not None:
        task, vault = plain
        admitted = await sub.gate.quotas.admit_async(sub.gate.request(config, task)) if sub.gate is not None else None
        if admitted is not None:
            _admitted(task, admitted)
        try:
            await transitions.acreate_plain(pool, dispatcher, task, waiting=sub.waiting)
        except BaseException:
            if admitted is not None and admitted.record is not None and sub.gate is not None:
                await anyio.to_thread.run_sync(sub.gate.quotas.release, task.id)
            raise
        return Created(task=task, replayed=False, headers=admitted.headers if admitted else {}, vault=vault)
    return await anyio.to_thread.run_sync(partial(submit, db, config, signatures, dispatcher, sub))


def _new(
    tenant_id: str,
    body: TaskCreate,
    pinned: str | None,
    normalised_input: dict[str, Any],
    *,
    task_id: str | None,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    key_id: str | None = None,
    found: dict[str, Any] | None = None,
) -> Task:
    options = body.options.model_dump(exclude_none=True)
    if pinned is not None:
        options["provider"] = pinned
    return new_task(
        task_id=task_id,
        tenant_id=tenant_id,
        type=body.type,
        model=body.model,
        input=normalised_input,
        options=options,
        metadata=body.metadata,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        key_id=key_id,
        guardrails=found,
    )


def create_task(
    tx: Tx,
    config: AppConfig,
    signatures: Mapping[str, Signature],
    dispatcher: Dispatcher,
    *,
    tenant_id: str,
    body: TaskCreate,
    pinned_provider: str | None,
    idempotency_key: str | None,
    idempotency_ttl_s: float,
    allow_private_webhooks: bool = False,
    task_id: str | None = None,
    key_id: str | None = None,
    gate: Gate | None = None,
    restorable: bool = False,
) -> Created:
    """Insert the task and its `task.queued` event; publish its id once the transaction commits. `task_id`
    gives the new task an id chosen beforehand (a caller that listens to its events from the start). `gate`
    admits it (a replay of an Idempotency-Key is not admitted again)."""
    pinned = body.options.provider or pinned_provider
    checked = checked_input(config, signatures, body, pinned, restorable=restorable)
    session = tx.session
    request_hash = None
    if idempotency_key is not None:
        request_hash = _request_hash(body, pinned)
        existing = repository.get_by_idempotency_key(session, tenant_id, idempotency_key)
        if existing is not None:
            if existing.created_at > utcnow() - timedelta(seconds=idempotency_ttl_s):
                return _replay(existing, request_hash)
            existing.idempotency_key = None  # expired: the key may be used again
            session.flush()

    task = _new(
        tenant_id,
        body,
        pinned,
        checked.input,
        task_id=task_id,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        key_id=key_id,
        found=checked.record,
    )
    admitted = gate.quotas.admit(gate.request(config, task)) if gate is not None else None
    if admitted is not None:
        _admitted(task, admitted)
        if admitted.record is not None:
            # Given back unless the transaction commits (then the task's end settles it).
            quotas, task_ref = gate.quotas, task.id  # type: ignore[union-attr]
            tx.on_rollback(lambda: quotas.release(task_ref))
    if body.webhook is not None:
        task.webhook = object_webhook(
            tx, tenant_id, task.id, body.webhook, allow_private=allow_private_webhooks, param="webhook"
        )
    if idempotency_key is not None:
        # Two requests with one key can race; the unique constraint picks the winner, the loser replays it.
        try:
            with session.begin_nested():
                session.add(task)
        except IntegrityError:
            existing = repository.get_by_idempotency_key(session, tenant_id, idempotency_key)
            if existing is None:
                raise
            if admitted is not None and admitted.record is not None and gate is not None:
                tx.after_commit(lambda: gate.quotas.release(task.id))
            return _replay(existing, request_hash or "")
    else:
        session.add(task)
    enqueue(tx, dispatcher, task)
    return Created(task=task, replayed=False, headers=admitted.headers if admitted else {}, vault=checked.vault)


def _replay(existing: Task, request_hash: str) -> Created:
    if existing.request_hash != request_hash:
        raise Conflict("Idempotency-Key was already used with a different request body", param="Idempotency-Key")
    return Created(task=existing, replayed=True)


def get_task(tx: Tx, tenant_id: str, task_id: str) -> dict[str, Any]:
    task = repository.get_for_tenant(tx.session, tenant_id, task_id)
    if task is None:
        raise NotFound(f"no task '{task_id}'", param="id")
    return task_view(task, repository.attempts_of(tx.session, [task.id])[task.id])


def list_tasks(
    tx: Tx,
    tenant_id: str,
    *,
    status: str | None,
    type: str | None,
    model: str | None,
    after: str | None,
    limit: int,
) -> dict[str, Any]:
    rows = repository.page(tx.session, tenant_id, status=status, type=type, model=model, after=after, limit=limit)
    more = len(rows) > limit
    rows = rows[:limit]
    attempts = repository.attempts_of(tx.session, [t.id for t in rows])
    return {
        "data": [task_view(t, attempts.get(t.id, [])) for t in rows],
        "next": rows[-1].id if more and rows else None,
    }


def cancel_task(tx: Tx, advancer: RunAdvancer | None, tenant_id: str, task_id: str) -> dict[str, Any]:
    """A queued task is canceled at once and never runs; a running one stops at its next safe point."""
    task, canceled_now = transitions.cancel(tx, advancer, tenant_id, task_id)
    if task is None:
        raise NotFound(f"no task '{task_id}'", param="id")
    if not canceled_now and task.status in TERMINAL:
        raise Conflict(f"task '{task_id}' already {task.status}", param="id")
    return task_view(task, repository.attempts_of(tx.session, [task.id])[task.id])
