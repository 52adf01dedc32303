"""The data model. Postgres is the truth; the broker only ever carries ids of these rows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# JSONB on Postgres, JSON text on SQLite (embedded mode).
JSONType = JSON().with_variant(JSONB(), "postgresql")
# SQLite has no 64-bit autoincrement type other than INTEGER PRIMARY KEY.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSONType, datetime: UTCDateTime()}


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # Signs the deliveries of per-object webhooks (a task's, a run's); made when first needed.
    webhook_secret: Mapped[str | None] = mapped_column(String(100))
    # After a rotation, the secret it replaced signs too (beside the new one) until then.
    previous_webhook_secret: Mapped[str | None] = mapped_column(String(100))
    previous_webhook_secret_until: Mapped[datetime | None]
    # The tenant's own limits and budget (core.policy.Limits / Budget as JSON) or a tier of the config file.
    limits: Mapped[dict[str, Any] | None]
    budget: Mapped[dict[str, Any] | None]
    tier: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """A bearer key. Only its SHA-256 is stored; `prefix` lets people tell keys apart."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str | None] = mapped_column(String(200))
    # Logical models the key may call (NULL: every model).
    models: Mapped[list[str] | None] = mapped_column(JSONType)
    # core.policy.Limits / Budget as JSON, or a tier of the config file.
    limits: Mapped[dict[str, Any] | None]
    budget: Mapped[dict[str, Any] | None]
    tier: Mapped[str | None] = mapped_column(String(100))
    expires_at: Mapped[datetime | None]
    # Who made it: a key id, `jwt:<subject>`, or `cli`.
    created_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class Task(Base):
    """One unit of inference work and its whole life: claim, lease, result, usage, cost."""

    __tablename__ = "tasks"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    input: Mapped[dict[str, Any]]
    options: Mapped[dict[str, Any]]
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata")
    webhook: Mapped[dict[str, Any] | None]
    result: Mapped[dict[str, Any] | None]
    error: Mapped[dict[str, Any] | None]
    usage: Mapped[dict[str, Any] | None]
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    # Times the sweeper took the task back from a worker that stopped renewing its lease (killed, hung).
    reclaim_count: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    # Execution bookkeeping: who holds the claim and until when; when the task may run; when it was last
    # handed to the broker (NULL: it must be published by the sweeper as soon as it is due).
    claim_id: Mapped[str | None] = mapped_column(String(40))
    lease_expires_at: Mapped[datetime | None]
    due_at: Mapped[datetime | None]
    published_at: Mapped[datetime | None]
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # A task made for a workflow step: which run, step, item of a for_each, and which (re)try of the step.
    run_id: Mapped[str | None] = mapped_column(String(40))
    step_id: Mapped[str | None] = mapped_column(String(100))
    item_index: Mapped[int | None] = mapped_column(Integer)
    step_generation: Mapped[int | None] = mapped_column(Integer)
    # A task made for a line of a batch: which batch, and which line of its input file (0-based).
    batch_id: Mapped[str | None] = mapped_column(String(40))
    batch_line: Mapped[int | None] = mapped_column(Integer)
    # The key that submitted it, and what its admission took from limits and budgets (settled when it ends).
    key_id: Mapped[str | None] = mapped_column(String(200))
    admission: Mapped[dict[str, Any] | None]
    # What its guardrails found and did: per direction, entity types and counts, moderation scores and
    # verdicts. Never the values found.
    guardrails: Mapped[dict[str, Any] | None]
    # The W3C traceparent of the span that created it, when traced: its execution continues that trace.
    traceparent: Mapped[str | None] = mapped_column(String(55))

    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_tasks_tenant_idempotency_key"),
        # A line is released as a task once, even if two advances of its batch race.
        UniqueConstraint("batch_id", "batch_line", name="uq_tasks_batch_line"),
        # A batch's advance counts its lines' tasks by status.
        Index("ix_tasks_batch_id_status", "batch_id", "status"),
        # A step's task for one item is made once per generation, even if two advances race.
        UniqueConstraint("run_id", "step_id", "step_generation", "item_index", name="uq_tasks_run_step_item"),
        Index("ix_tasks_tenant_id_id", "tenant_id", "id"),
        # The sweeper scans only live rows.
        Index(
            "ix_tasks_live",
            "status",
            "due_at",
            postgresql_where=text("status IN ('queued', 'running')"),
            sqlite_where=text("status IN ('queued', 'running')"),
        ),
    )


class Attempt(Base):
    """One provider call made for a task."""

    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    n: Mapped[int] = mapped_column(Integer)
    # The logical model the attempt was made for: the task's own, or a fallback.
    model: Mapped[str | None] = mapped_column(String(200))
    provider: Mapped[str] = mapped_column(String(100))
    deployment: Mapped[str] = mapped_column(String(300))
    provider_model: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    error_type: Mapped[str | None] = mapped_column(String(40))
    error_message: Mapped[str | None] = mapped_column(Text)
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int] = mapped_column(Integer)
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cached_input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cache_write_tokens: Mapped[int] = mapped_column(Integer, default=0)
    predictions: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    compute_ms: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime]

    __table_args__ = (
        Index("ix_attempts_task_id_n", "task_id", "n"),
        # GET /v1/usage reads a span of time.
        Index("ix_attempts_started_at", "started_at"),
    )


class Workflow(Base):
    """A registered definition. Each registration of a name is a new version. Definitions loaded from
    `config/workflows/` have no tenant and are visible to every tenant."""

    __tablename__ = "workflows"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str | None] = mapped_column(String(40))
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)
    spec: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        UniqueConstraint("tenant_id", "name", "version", name="uq_workflows_tenant_name_version"),
        Index("ix_workflows_name", "name"),
    )


class Run(Base):
    """One execution of a workflow version."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    # The key that started it: its steps draw on that key's limits and budget.
    key_id: Mapped[str | None] = mapped_column(String(200))
    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflows.id"))
    workflow: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    input: Mapped[dict[str, Any]]
    output: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error: Mapped[dict[str, Any] | None]
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    usage: Mapped[dict[str, Any] | None]
    webhook: Mapped[dict[str, Any] | None]
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    # When the run was last advanced; the sweeper advances runs that have sat still too long.
    advanced_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # The W3C traceparent of the request that started it, when traced: each advance links to that trace.
    traceparent: Mapped[str | None] = mapped_column(String(55))

    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_runs_tenant_idempotency_key"),
        Index("ix_runs_tenant_id_id", "tenant_id", "id"),
        Index(
            "ix_runs_live",
            "status",
            postgresql_where=text("status IN ('queued', 'running')"),
            sqlite_where=text("status IN ('queued', 'running')"),
        ),
    )


class RunStep(Base):
    """A step of a run. `generation` counts re-runs of the step (a run retry makes a new generation)."""

    __tablename__ = "run_steps"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    step_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    generation: Mapped[int] = mapped_column(Integer, default=0)
    output: Mapped[Any] = mapped_column(JSONType, nullable=True)
    error: Mapped[dict[str, Any] | None]
    # for_each: the rendered items (kept so that later items start as earlier ones finish, under max_parallel).
    items: Mapped[Any] = mapped_column(JSONType, nullable=True)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class Batch(Base):
    """A batch job: an input file of requests, each line run as a task (`tasks.batch_id`), a window of lines
    released at a time; the output and error files written when every line has ended."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    # The key that created it: its lines draw on that key's limits and budget.
    key_id: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    endpoint: Mapped[str] = mapped_column(String(100))
    input_file_id: Mapped[str] = mapped_column(String(40))
    completion_window: Mapped[str] = mapped_column(String(16))
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONType)
    options: Mapped[dict[str, Any]]
    webhook: Mapped[dict[str, Any] | None]
    errors: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType)
    output_file_id: Mapped[str | None] = mapped_column(String(40))
    error_file_id: Mapped[str | None] = mapped_column(String(40))
    # Lines of the input file (known once validated), and how many have been released as tasks.
    total: Mapped[int] = mapped_column(Integer, default=0)
    released: Mapped[int] = mapped_column(Integer, default=0)
    completed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    usage: Mapped[dict[str, Any] | None]
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    # Every line below `settled_below` has ended, and `settled` holds their counts (LineCounts.to_json): an
    # advance aggregates only the lines from there on, a cost that stays with the window, not the batch.
    settled_below: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    settled: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    in_progress_at: Mapped[datetime | None]
    finalizing_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]
    expired_at: Mapped[datetime | None]
    cancelling_at: Mapped[datetime | None]
    cancelled_at: Mapped[datetime | None]
    # When the batch was last advanced (the sweep advances batches that sat still) and last said its progress.
    advanced_at: Mapped[datetime | None]
    progress_at: Mapped[datetime | None]
    # The W3C traceparent of the request that created it, when traced: each advance links to that trace.
    traceparent: Mapped[str | None] = mapped_column(String(55))

    __table_args__ = (
        Index("ix_batches_tenant_id_id", "tenant_id", "id"),
        Index(
            "ix_batches_live",
            "status",
            postgresql_where=text("status IN ('validating', 'in_progress', 'finalizing', 'cancelling')"),
            sqlite_where=text("status IN ('validating', 'in_progress', 'finalizing', 'cancelling')"),
        ),
    )


class BatchLine(Base):
    """A validated line of a batch's input, waiting to be released as a task (and, after, what names the
    task's output line: its `custom_id`). Released lines stay, so that the files are written in line order."""

    __tablename__ = "batch_lines"

    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True)
    line: Mapped[int] = mapped_column(Integer, primary_key=True)
    custom_id: Mapped[str] = mapped_column(String(512))
    type: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(200))
    input: Mapped[dict[str, Any]]
    options: Mapped[dict[str, Any]]
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata")


class Event(Base):
    """The event log: one row per state change, written in the transaction that made the change.

    `id` is assigned at insert and so follows no commit order. `seq` is the public event id: the relay
    (events/relay.py) numbers committed rows one batch at a time, so seq increases in the order events become
    readable and a reader that has seen seq N will never later find an event below N."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    seq: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    type: Mapped[str] = mapped_column(String(40))
    task_id: Mapped[str | None] = mapped_column(String(40))
    run_id: Mapped[str | None] = mapped_column(String(40))
    step_id: Mapped[str | None] = mapped_column(String(100))
    batch_id: Mapped[str | None] = mapped_column(String(40))
    data: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("ix_events_tenant_id_seq", "tenant_id", "seq"),
        Index("ix_events_task_id_seq", "task_id", "seq"),
        Index("ix_events_run_id_seq", "run_id", "seq"),
        Index("ix_events_batch_id_seq", "batch_id", "seq"),
        # What the relay has still to number.
        Index(
            "ix_events_unsequenced",
            "id",
            postgresql_where=text("seq IS NULL"),
            sqlite_where=text("seq IS NULL"),
        ),
    )


class Webhook(Base):
    """Where events are delivered: a tenant's subscription (`object_id` NULL: every event of the tenant its
    patterns match), or the `webhook` of one task, run or batch (`object_id` set: that object's events,
    signed with the tenant's secret)."""

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(JSONType)
    description: Mapped[str | None] = mapped_column(String(500))
    secret: Mapped[str | None] = mapped_column(String(100))
    # After a rotation, the secret it replaced signs too (beside the new one) until then.
    previous_secret: Mapped[str | None] = mapped_column(String(100))
    previous_secret_until: Mapped[datetime | None]
    object_id: Mapped[str | None] = mapped_column(String(40))
    # enabled | disabled (by hand, or by a receiver answering 410 Gone)
    status: Mapped[str] = mapped_column(String(16))
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("ix_webhooks_tenant_id_object_id", "tenant_id", "object_id"),
        Index("ix_webhooks_object_id", "object_id"),
    )


class WebhookDelivery(Base):
    """One event to one webhook, delivered durably. Its id is the `webhook-id` header, the same on every
    attempt, so receivers can drop duplicates."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_seq: Mapped[int] = mapped_column(BigInteger)
    event_type: Mapped[str] = mapped_column(String(40))
    # pending | delivering | succeeded | failed
    status: Mapped[str] = mapped_column(String(16))
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    published_at: Mapped[datetime | None]
    claim_id: Mapped[str | None] = mapped_column(String(40))
    lease_expires_at: Mapped[datetime | None]
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]

    __table_args__ = (
        # An event is derived into a delivery once per webhook, even if the relay runs a batch again.
        UniqueConstraint("webhook_id", "event_seq", name="uq_webhook_deliveries_webhook_event"),
        Index("ix_webhook_deliveries_webhook_id_id", "webhook_id", "id"),
        Index(
            "ix_webhook_deliveries_live",
            "status",
            "next_attempt_at",
            postgresql_where=text("status IN ('pending', 'delivering')"),
            sqlite_where=text("status IN ('pending', 'delivering')"),
        ),
    )


class WebhookAttempt(Base):
    """One POST of a delivery: what the receiver answered, or why nothing came back."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id", ondelete="CASCADE"))
    n: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    response_excerpt: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime]

    __table_args__ = (Index("ix_webhook_attempts_delivery_id_n", "delivery_id", "n"),)


class Duty(Base):
    """A periodic duty (a domain's sweep) and its last successful run, written by the leader that ran it in
    the sweep's own transaction; `/readyz` reads it to tell when no process has been doing the duty."""

    __tablename__ = "duties"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    # Who ran it last: host, process id and role (worker or scheduler).
    leader: Mapped[str] = mapped_column(String(200))
    last_run_at: Mapped[datetime]


class File(Base):
    """A file of the Files API: an upload (`purpose` batch) or what a batch wrote (`batch_output`). The row
    describes it; its bytes live in the files storage under `storage_key`. Deleting a file removes its bytes
    and keeps the row (`deleted_at` set), so ids a batch names can still be told apart from unknown ones."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    purpose: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(Text)
    bytes: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    storage_key: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None]

    __table_args__ = (
        # Lists are a tenant's live files by id (ids sort by creation time: the newest-first order and cursor).
        Index(
            "ix_files_tenant_id_id",
            "tenant_id",
            "id",
            postgresql_where=text("deleted_at IS NULL"),
            sqlite_where=text("deleted_at IS NULL"),
        ),
    )


# The tables themselves, for hot-path Core inserts that skip the ORM's unit of work.
ATTEMPTS = cast(Table, Attempt.__table__)
BATCH_LINES = cast(Table, BatchLine.__table__)
EVENTS = cast(Table, Event.__table__)


class AuditEntry(Base):
    """One admin action: who did what to which object, with the object before and after."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    # A key id, `jwt:<subject>`, or `cli`.
    actor: Mapped[str] = mapped_column(String(200))
    # e.g. key.create, key.revoke, tenant.limits.update, tenant.budget.update, webhook.create, workflow.register
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(200))
    before: Mapped[dict[str, Any] | None]
    after: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_audit_log_tenant_id_id", "tenant_id", "id"),)


class ModelVersionWeights(Base):
    """The traffic weights of a predict model's versions as an admin last set them ({version: weight}); a
    model without a row uses its config file's `versions`. Workers and API processes re-read it every
    `model_weights_cache_s`, so a change (a roll forward, a roll back) reaches them all without a restart."""

    __tablename__ = "model_version_weights"

    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    weights: Mapped[dict[str, Any]]
    updated_by: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
