"""Process settings: every knob is a `SWITCHYARD_*` environment variable, validated at start-up."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from switchyard.defaults import DEFAULT_CONFIG, DEFAULT_WORKFLOWS


class Settings(BaseSettings):
    """One place for configuration; nonsense is refused when the process starts."""

    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_", extra="ignore")

    # Storage and transport. No Redis URL means embedded mode: SQLite, a local Celery transport. Unset, the
    # database is the SQLite file in the data directory, so every command run beside `switchyard dev` (which
    # uses the same defaults) finds the same database.
    database_url: str = ""
    redis_url: str | None = None
    broker_url: str | None = None
    data_dir: Path = Path(".switchyard")
    # The providers/models file; unset, the one packaged with Switchyard (everything on the fake provider).
    config: Path = DEFAULT_CONFIG
    # Shared workflow definitions loaded at start-up; unset, the `workflows/` folder beside the config file
    # when there is one, else the packaged ones with the packaged config (they name its models), else none.
    workflows_dir: Path | None = None

    # Logging: the level of every process (a command's --loglevel overrides it).
    log_level: str = Field(default="INFO", pattern="(?i)^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$")
    # `console` (lines for people) or `json` (one JSON object a line, with request_id, task_id, run_id, trace_id).
    log_format: Literal["console", "json"] = "console"
    # Traces (OpenTelemetry, configured by the SDK's OTEL_* variables). Unset: on when OTEL_EXPORTER_OTLP_ENDPOINT,
    # OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_TRACES_EXPORTER (other than `none`) is set; true or false decides.
    tracing: bool | None = None

    # HTTP edge.
    max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    # Files API: where uploaded and batch-written files live, and how large an upload may be (its own limit:
    # uploads stream to storage, so they are not bound by max_body_bytes). Every API and worker process of a
    # deployment must see the same directory: on several machines, a shared volume mounted at the same path.
    # Unset, `files/` in the data directory.
    files_dir: Path | None = None
    # Or S3-compatible object storage (AWS S3, MinIO, R2, ...): set the bucket and the files live there, under
    # the prefix, instead of in the directory. The endpoint URL names a server other than AWS's; the region,
    # unset, is boto3's (AWS_REGION, the profile). Credentials come from boto3's standard chain
    # (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance or pod role): never from here.
    # (An empty bucket is unset: compose's `${VAR:-}` gives one.)
    files_s3_bucket: str | None = Field(default=None, pattern=r"^([A-Za-z0-9][A-Za-z0-9._-]{1,254})?$")
    files_s3_prefix: str = ""
    files_s3_endpoint_url: str | None = None
    files_s3_region: str | None = None
    max_file_bytes: int = Field(default=200 * 1024 * 1024, ge=1024)
    # Image inputs of predict models: the most pixels one image may have (checked from its header before it is
    # decoded: decompression bombs), and the most images one request may carry (they run as one batch).
    max_image_pixels: int = Field(default=16_000_000, ge=1)
    max_images_per_request: int = Field(default=64, ge=1, le=4096)
    # How long a process keeps the traffic weights of model versions before reading them again: a change
    # (PUT /v1/models/{name}/versions) reaches every worker within this time.
    model_weights_cache_s: float = Field(default=1.0, ge=0, le=3600)
    # Tenants whose admin keys may change those weights (they route every tenant's traffic): the operators'.
    # Empty, no key may (embedded mode's `dev` tenant is added by `switchyard dev`).
    operator_tenants: list[str] = Field(default_factory=list, max_length=100)
    # A verified key (or JWT) is kept this long in each API process. Changes and revocations reach every
    # process at once over Redis pub/sub; while that subscription is down, and in embedded mode (no Redis),
    # an entry is kept at most api_key_cache_unsubscribed_s.
    api_key_cache_s: float = Field(default=30.0, ge=0)
    api_key_cache_unsubscribed_s: float = Field(default=2.0, ge=0)
    # How long a call's budget reservation and concurrency slot hold at most when its task never ends (its
    # process died before committing it): the admissions after that release them.
    reservation_ttl_s: float = Field(default=6 * 3600.0, gt=0)
    # Connections kept open per process. The API runs at most this many requests' database work at once.
    db_pool_size: int = Field(default=20, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)
    # How long making a database connection may take (a server that stopped answering would otherwise hold a
    # request for the kernel's TCP timeout, minutes): past it, the request is a 503. Whole seconds (libpq's).
    db_connect_timeout_s: int = Field(default=5, ge=2)

    # Execution. A lease is the time a claim stays valid past the provider timeout before the sweeper
    # may hand the task to another worker; messages left unconsumed are re-published after requeue_after_s.
    default_timeout_s: float = Field(default=60.0, gt=0)
    default_max_attempts: int = Field(default=3, ge=1, le=20)
    lease_grace_s: float = Field(default=30.0, gt=0)
    requeue_after_s: float = Field(default=60.0, gt=0)
    sweep_interval_s: float = Field(default=5.0, gt=0)
    # Workflows. One template render (a step's `when`, `for_each`, one item's input, the run's output) may run
    # this many loop iterations and calls, build strings and values of this many characters, and take this
    # long; past any of them the step fails with a template_error naming the limit. A `for_each` step may have
    # this many items, and runs this many at once when it gives no `max_parallel`.
    workflow_template_max_iterations: int = Field(default=100_000, ge=100)
    workflow_template_max_chars: int = Field(default=2_000_000, ge=1000)
    workflow_template_timeout_s: float = Field(default=1.0, gt=0)
    workflow_max_items: int = Field(default=10_000, ge=1)
    workflow_default_max_parallel: int = Field(default=100, ge=1, le=1000)
    # Synchronous calls reach a worker through a Redis list rather than a Celery message (workers/handoff.py),
    # when a worker takes them: it saves the worker Celery's cost per message. Off: everything goes by Celery.
    handoff: bool = True
    # One advance of a run renders for this long at most (and never past half of requeue_after_s, the soft
    # time limit of the advance's Celery task); what is left is rendered by a next advance, sent at once.
    workflow_advance_render_s: float = Field(default=10.0, gt=0)
    # /readyz fails when a periodic duty has not run for this long (unset: max(30 s, 5 sweep intervals), room
    # for a leader to die and a standby to take over without the API flapping).
    duty_stale_after_s: float | None = Field(default=None, gt=0)
    # Backoff waits up to this long are slept in the worker; longer ones become a due time in the database.
    inline_retry_max_s: float = Field(default=5.0, ge=0)
    retry_base_s: float = Field(default=0.5, gt=0)
    retry_max_s: float = Field(default=30.0, gt=0)
    idempotency_ttl_s: float = Field(default=24 * 3600, gt=0)
    # How long the synchronous endpoints (/v1/chat/completions, /v1/embeddings, ...) wait for their task
    # before answering 504 (the task goes on and can be polled).
    sync_wait_s: float = Field(default=300.0, gt=0)
    # Provider calls one worker process has in flight at once (on its event loop). Past that the worker takes
    # no more messages, so others can. On shutdown, calls get shutdown_grace_s to end; the rest are handed back.
    max_in_flight: int = Field(default=1000, ge=1, le=100_000)
    # Batch lines have slots of their own beside those (unset: a quarter of max_in_flight), so a batch never
    # takes the slots interactive calls need.
    batch_max_in_flight: int | None = Field(default=None, ge=1, le=100_000)
    # A worker that consumes the batch queue beside others runs the batch lines in a child process of its own
    # (workers/batch_process.py): a batch then never holds the interpreter lock that interactive calls need.
    # The child runs at this nice value (0: the same CPU priority), so interactive calls get the cores first.
    batch_process: bool = True
    batch_process_nice: int = Field(default=10, ge=0, le=19)
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    # A task no deployment can take (breakers open, rpm/tpm limits reached) waits in the database; it fails
    # as unavailable once it is this old.
    unavailable_timeout_s: float = Field(default=600.0, gt=0)
    # Moderation gates: how long one check may take (all its tries together) before the moderation model
    # counts as unavailable and the guardrail's `when_unavailable` decides; the keyword list that
    # `when_unavailable: keywords` uses (unset: the packaged defaults/moderation_keywords.yaml).
    moderation_timeout_s: float = Field(default=3.0, gt=0, le=60)
    moderation_keywords_file: Path | None = None

    # Events. The relay looks for committed events every relay_poll_s and numbers what it finds in one batch:
    # writers do not wake it (a NOTIFY serialises every notifying commit, fsync included, on one lock; a
    # publish per commit is a round trip per write), and under load each look finds a batch. API processes
    # look at the table every feed_poll_s in case a Redis message was lost (embedded mode, with no Redis,
    # polls far more often).
    relay_poll_s: float = Field(default=0.05, gt=0, le=5)
    feed_poll_s: float = Field(default=15.0, gt=0)
    # WebSocket: connections per tenant (across API processes when Redis is shared) and the events a
    # connection may fall behind before it is closed as a slow consumer.
    ws_max_connections_per_tenant: int = Field(default=1000, ge=1)
    ws_max_queue: int = Field(default=1000, ge=10)
    # An SSE stream with nothing to send writes a comment this often, so proxies keep it open.
    sse_keepalive_s: float = Field(default=15.0, gt=0, le=300)
    # permessage-deflate on WebSocket connections: less bandwidth, much more CPU per listener.
    ws_compression: bool = False
    # Bounds on what one tenant's streams may make an API process hold (docs/api.md, "Stream limits"). SSE
    # streams per tenant (across API processes when Redis is shared); subscriptions of one WebSocket; the size of
    # a client's frame (commands are under 1 KiB); client frames read but not yet handled; replays (`since`)
    # running at once per tenant in a process; how long one frame may take to go out before the client counts as
    # too slow and is closed (1013).
    sse_max_streams_per_tenant: int = Field(default=100, ge=1)
    ws_max_subscriptions: int = Field(default=100, ge=1)
    ws_max_frame_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    ws_max_pending_frames: int = Field(default=64, ge=1)
    ws_max_replays_per_tenant: int = Field(default=8, ge=1)
    ws_send_timeout_s: float = Field(default=10.0, gt=0, le=300)
    # Synchronous waiters (/v1/chat/completions, /v1/embeddings, /v1/moderations, /v1/predict) held at once by
    # one API process, in all and per tenant; past them 503 / 429 with Retry-After. A waiter waits at most
    # sync_redis_timeout_s for a Redis connection or answer before it falls back to reading the task's row.
    sync_max_waiters: int = Field(default=1000, ge=1, le=100_000)
    sync_max_waiters_per_tenant: int = Field(default=200, ge=1, le=100_000)
    sync_redis_timeout_s: float = Field(default=5.0, gt=0, le=60)
    # Request line and headers: the most uvicorn buffers before it answers 431/400 (h11's incomplete event).
    max_header_bytes: int = Field(default=16 * 1024, ge=1024, le=1024 * 1024)
    # Open WebSockets and SSE streams check that their key still stands this often (revocations are also
    # heard at once over Redis); a revoked or expired key's streams are closed.
    stream_key_recheck_s: float = Field(default=5.0, gt=0, le=300)
    # Tickets (`POST /v1/ws/ticket`): single use, valid this long, for `?ticket=` on the WebSocket and SSE.
    stream_ticket_ttl_s: float = Field(default=30.0, gt=0, le=600)
    # Rotating a webhook signing secret keeps the old one signing beside the new one this long by default.
    webhook_secret_overlap_s: float = Field(default=24 * 3600, ge=0, le=30 * 24 * 3600)

    # Prometheus metrics (docs/api.md, "Metrics"): GET /metrics on the API, `switchyard worker --metrics-port`
    # (or metrics_port) on workers, served on metrics_host. A tenant label on the per-task families only when
    # asked: one series per tenant and model is what makes a Prometheus fall over. The API's queue and health
    # gauges come from the database and Redis, read at most once per metrics_state_cache_s.
    metrics: bool = True
    metrics_tenant_label: bool = False
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "0.0.0.0"
    metrics_state_cache_s: float = Field(default=5.0, ge=0, le=300)

    # Webhooks. Deliveries to loopback, private and link-local addresses are refused unless allowed (cloud
    # metadata addresses always are). A failed attempt is retried after each wait of the schedule in turn
    # (a JSON list of seconds), never sooner than the receiver's Retry-After; then the delivery has failed.
    webhook_allow_private: bool = False
    webhook_retry_schedule_s: list[float] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0], max_length=50
    )
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=120)
    webhook_max_response_bytes: int = Field(default=64 * 1024, ge=0)

    # Batches. At most `batch_window` lines of one batch exist as tasks (queued or running) at a time, so a
    # 50,000-line batch never floods the broker; the completion window ("24h") can be made shorter (tests).
    batch_window: int = Field(default=1000, ge=1, le=50_000)
    batch_completion_window_s: float | None = Field(default=None, gt=0)
    batch_max_lines: int = Field(default=50_000, ge=1, le=1_000_000)
    # A batch says its progress (`batch.progress`) at most this often.
    batch_progress_interval_s: float = Field(default=1.0, ge=0)

    # Load shedding. The leading worker counts each queue's waiting tasks (due, not yet started) and the age of
    # the oldest every queue_stats_interval_s and publishes the figures (Redis; a file in the data directory in
    # embedded mode); each API process reads them at most every shed_refresh_s, off the request path. A
    # submission whose queue (provider, or ml for predictions) is deeper than shed_queue_depth tasks or whose
    # oldest waiting task is older than shed_queue_age_s is refused with 503 and Retry-After. Unset: that bound
    # is off. Figures older than shed_stale_after_s (no leader publishing) never shed. Batch lines have their own
    # queue and release window and are not counted.
    shed_queue_depth: int | None = Field(default=None, ge=1)
    shed_queue_age_s: float | None = Field(default=None, gt=0)
    shed_retry_after_s: int = Field(default=5, ge=1, le=3600)
    shed_refresh_s: float = Field(default=0.5, gt=0, le=10)
    shed_stale_after_s: float = Field(default=10.0, gt=0)
    queue_stats_interval_s: float = Field(default=1.0, gt=0, le=60)

    # Retention: the leading worker deletes what ended longer ago than these (days; fractions allowed, and the
    # `_s` twin in seconds wins when set, for tests). Unset or 0: kept forever (the default of each). Tasks
    # (with their attempts) once finished and not part of a live run or batch; events by a prefix of each
    # tenant's ids older than that, never past an event of a live task, run or batch; webhook deliveries (with
    # their attempts) once delivered or failed; batches once ended (their lines, and the files they wrote and
    # read); audit entries. Deletes go retention_batch rows a statement, each in a short transaction.
    retention_tasks_days: float | None = Field(default=None, ge=0)
    retention_tasks_s: float | None = Field(default=None, ge=0)
    retention_events_days: float | None = Field(default=None, ge=0)
    retention_events_s: float | None = Field(default=None, ge=0)
    retention_deliveries_days: float | None = Field(default=None, ge=0)
    retention_deliveries_s: float | None = Field(default=None, ge=0)
    retention_batches_days: float | None = Field(default=None, ge=0)
    retention_batches_s: float | None = Field(default=None, ge=0)
    retention_audit_days: float | None = Field(default=None, ge=0)
    retention_audit_s: float | None = Field(default=None, ge=0)
    retention_batch: int = Field(default=1000, ge=1, le=100_000)
    # At most this many statements per table each time the duty runs, so that one pass over a large backlog
    # does not hold the other duties back; the rest goes on the next pass.
    retention_max_batches: int = Field(default=20, ge=1)
    # How often the retention duty runs (the other duties run every sweep_interval_s).
    retention_interval_s: float = Field(default=60.0, gt=0)

    # JWT bearer tokens beside API keys: on when the JWKS URL is set (issuer and audience are then required).
    # The tenant (by name, made on first use) and the role come from the claims named here.
    jwt_jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_tenant_claim: str = Field(default="tenant", min_length=1)
    jwt_role_claim: str = Field(default="role", min_length=1)
    # The JWKS is fetched again after this long, or sooner when a token names an unknown key id (a rotation),
    # but not more often than the cooldown (a flood of made-up key ids must not become a flood of fetches).
    jwt_jwks_cache_s: float = Field(default=300.0, gt=0)
    jwt_jwks_refresh_cooldown_s: float = Field(default=5.0, ge=0)
    # Flower. Workers send Celery's task events (received, started, succeeded) and publishers a task-sent event
    # per message: that is what Flower shows. Off, each message costs a worker about 0.4 ms of CPU less (its
    # publisher 0.1 ms; bench/task_events_cost.py), and Flower (`switchyard flower`) does not turn them on again.
    # Unset: on, except on the filesystem broker of embedded mode, which Flower does not watch (see
    # `send_task_events`).
    task_events: bool | None = None
    # Credentials of Flower's UI and HTTP API, `user:password`, several comma-separated (Flower's --basic-auth).
    # Without them `switchyard flower` serves on loopback only, and Flower's HTTP API answers 401.
    flower_basic_auth: SecretStr | None = None

    # Guardrails. The secret of the PII guardrail's `hash` mode (the same on every process of a deployment, so
    # that a value hashes alike everywhere); unset, a random key kept in the data directory (one machine).
    pii_hash_key: SecretStr | None = Field(default=None, min_length=16)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.jwt_jwks_url and not (self.jwt_issuer and self.jwt_audience):
            raise ValueError(
                "SWITCHYARD_JWT_ISSUER and SWITCHYARD_JWT_AUDIENCE must be set with SWITCHYARD_JWT_JWKS_URL"
            )
        if self.jwt_jwks_url and not self.jwt_jwks_url.startswith(("http://", "https://")):
            raise ValueError("SWITCHYARD_JWT_JWKS_URL must be an http:// or https:// URL")
        if self.retry_base_s > self.retry_max_s:
            raise ValueError("SWITCHYARD_RETRY_BASE_S must not exceed SWITCHYARD_RETRY_MAX_S")
        if any(wait < 0 for wait in self.webhook_retry_schedule_s):
            raise ValueError("SWITCHYARD_WEBHOOK_RETRY_SCHEDULE_S must list waits of zero seconds or more")
        if self.files_s3_endpoint_url and not self.files_s3_endpoint_url.startswith(("http://", "https://")):
            raise ValueError("SWITCHYARD_FILES_S3_ENDPOINT_URL must be an http:// or https:// URL")
        # Keys are `<prefix>/<tenant>/<file id>`: a prefix given with or without its slashes means the same.
        prefix = self.files_s3_prefix.strip("/")
        self.files_s3_prefix = f"{prefix}/" if prefix else ""
        if self.flower_basic_auth is not None and not self.flower_basic_auth.get_secret_value():
            # Compose passes an unset variable as an empty one.
            self.flower_basic_auth = None
        if self.flower_basic_auth is not None:
            pairs = self.flower_basic_auth.get_secret_value().split(",")
            if not all(user and password for user, _, password in (p.partition(":") for p in pairs)):
                # The value is a secret: the message never repeats it.
                raise ValueError("SWITCHYARD_FLOWER_BASIC_AUTH must be user:password pairs separated by commas")
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'switchyard.db').resolve()}"
        if not self.database_url.startswith(("postgresql", "sqlite")):
            raise ValueError("SWITCHYARD_DATABASE_URL must be a postgresql:// or sqlite:// URL")
        return self

    @property
    def duty_stale_after(self) -> float:
        """Seconds after which a periodic duty that has not run makes the service not ready."""
        if self.duty_stale_after_s is not None:
            return self.duty_stale_after_s
        return max(30.0, 5 * self.sweep_interval_s)

    def retention_s(self, kind: str) -> float | None:
        """Seconds `kind` (tasks, events, deliveries, batches, audit) is kept once ended; None: forever.
        Events follow the tasks' retention unless given their own."""
        seconds: float | None = getattr(self, f"retention_{kind}_s")
        days: float | None = getattr(self, f"retention_{kind}_days")
        value = seconds if seconds is not None else (days * 86400 if days is not None else None)
        if value is None and kind == "events":
            return self.retention_s("tasks")
        return value or None

    @property
    def send_task_events(self) -> bool:
        """Whether Celery task events are sent (SWITCHYARD_TASK_EVENTS). Not by default on the filesystem broker:
        its fanout exchange keeps each listener's queue in a file, and a Flower that has stopped would leave one
        that every event is then written to, for good."""
        if self.task_events is not None:
            return self.task_events
        return not self.filesystem_broker

    @property
    def flower_credentials(self) -> list[str]:
        """The `user:password` pairs of SWITCHYARD_FLOWER_BASIC_AUTH (none when unset)."""
        if self.flower_basic_auth is None:
            return []
        return self.flower_basic_auth.get_secret_value().split(",")

    @property
    def files_path(self) -> Path:
        """The directory of the Files API's bytes (`SWITCHYARD_FILES_DIR`, else `<data dir>/files`)."""
        return (self.files_dir or self.data_dir / "files").resolve()

    @property
    def shared_workflows(self) -> Path:
        """The folder of workflow definitions shared by every tenant (one that does not exist holds none)."""
        if self.workflows_dir is not None:
            return self.workflows_dir
        beside = self.config.parent / "workflows"
        return beside if beside.is_dir() or self.config.resolve() != DEFAULT_CONFIG else DEFAULT_WORKFLOWS

    @property
    def sqlite_path(self) -> Path | None:
        """The database file in embedded mode (None on Postgres or an in-memory database)."""
        prefix = "sqlite:///"
        if not self.database_url.startswith(prefix) or self.database_url in (prefix, prefix + ":memory:"):
            return None
        return Path(self.database_url[len(prefix) :])

    @property
    def embedded(self) -> bool:
        """True when no Redis is configured: the broker is a local transport and nothing is shared."""
        return self.redis_url is None

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL with the psycopg 3 driver spelled out for Postgres."""
        url = self.database_url
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url

    @property
    def filesystem_broker(self) -> bool:
        """True on the filesystem transport of embedded mode."""
        return self.celery_broker_url.startswith("filesystem://")

    @property
    def celery_broker_url(self) -> str:
        """Redis when configured, else a filesystem transport that separate processes share."""
        if self.broker_url:
            return self.broker_url
        if self.redis_url:
            return self.redis_url
        # kombu warns on every connection when the URL names no host (the transport ignores it).
        return "filesystem://localhost/"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read once."""
    return Settings()
