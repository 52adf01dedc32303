"""Per-process resources of a worker, made in Celery's process hooks (never at import, never before a fork)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import redis
import structlog
from celery import signals

from switchyard.batches.engine import BatchContext
from switchyard.core.config import AppConfig, load_config
from switchyard.core.db import Database
from switchyard.core.redis_pool import shared_client
from switchyard.events.bus import publish_delta
from switchyard.events.local_bus import LocalDeltaSender, delta_folder
from switchyard.events.relay import EventRelay
from switchyard.files.storage import storage_for
from switchyard.guardrails.pii.keys import load_hash_key
from switchyard.ml.catalog import model_signatures
from switchyard.ml.versions import VersionWeights
from switchyard.observability import tracing
from switchyard.providers.health import DeploymentHealth, HealthStore, health_store
from switchyard.providers.health_snapshots import SnapshotWriter, written_store
from switchyard.providers.limits import RateLimits
from switchyard.providers.registry import ProviderSet
from switchyard.providers.router import Router
from switchyard.settings import Settings, get_settings
from switchyard.tasks.completion import signal_done
from switchyard.tasks.execution import Executor
from switchyard.tasks.transitions import install_settler
from switchyard.tenancy.quotas.service import Quotas
from switchyard.webhooks.delivery import Deliverer, derive_deliveries
from switchyard.webhooks.sender import WebhookSender
from switchyard.workers.batch_advance import LocalBatchAdvancer
from switchyard.workers.dispatch import CeleryDispatcher, ThrottledBatchAdvancer
from switchyard.workers.handoff import HandoffIntake
from switchyard.workers.queues import CONTROL, ML, PROVIDER
from switchyard.workers.runtime import Runtime
from switchyard.workflows.engine import Engine
from switchyard.workflows.rendering import WorkflowLimits
from switchyard.workflows.runner import LocalAdvancer

log = structlog.get_logger(__name__)

# The queues of the synchronous endpoints' tasks, which the API hands off (workers/handoff.py).
HANDED_OFF = (PROVIDER, ML)


@dataclass
class WorkerResources:
    settings: Settings
    config: AppConfig
    db: Database
    providers: ProviderSet
    executor: Executor
    engine: Engine
    dispatcher: CeleryDispatcher
    redis: redis.Redis | None
    sender: WebhookSender
    deliverer: Deliverer
    runtime: Runtime
    relay: EventRelay | None = None
    handoff: HandoffIntake | None = None
    # Embedded mode only: the chunks' sockets and the health file (see events/local_bus, health_snapshots).
    local_deltas: LocalDeltaSender | None = None
    health_file: SnapshotWriter | None = None
    # The advances of the batches whose lines end in this process (workers/batch_advance.py).
    batch_advances: LocalBatchAdvancer | None = None

    _batches: BatchContext | None = None

    def batches(self) -> BatchContext:
        """What advancing batches needs; made on first use (reading the ML models' signatures takes a while,
        and most worker processes never advance a batch)."""
        with _lock:
            if self._batches is None:
                self._batches = BatchContext(
                    settings=self.settings,
                    config=self.config,
                    signatures=model_signatures(self.config),
                    storage=storage_for(self.settings),
                    dispatcher=self.dispatcher,
                    quotas=self.engine.quotas,
                )
            return self._batches

    def start_relay(self) -> None:
        """Run an event relay thread in this process (it numbers events while it holds the leadership)."""
        if self.relay is None:
            self.relay = EventRelay(
                self.db,
                redis_url=self.settings.redis_url,
                lock_dir=self.settings.data_dir,
                poll_s=self.settings.relay_poll_s,
                derive=partial(derive_deliveries, self.dispatcher),
            )
            self.relay.start()

    def start_handoff(self, queues: Iterable[str]) -> None:
        """Take the hand-offs of these queues (those of the synchronous calls: provider and ML), when Redis is
        there and the hand-off is on."""
        taken = [q for q in queues if q in HANDED_OFF]
        if self.handoff is not None or not taken or not self.settings.handoff or not self.settings.redis_url:
            return
        self.handoff = HandoffIntake(
            self.settings.redis_url,
            taken,
            self.runtime.submit,
            self.runtime.room,
        )
        self.handoff.start()

    def close(self) -> None:
        """Hand back what runs (after the grace), then stop and release everything. Each step runs even when
        one before it failed: a relay that fails to stop must not leave the health file behind, say."""
        started = time.monotonic()
        steps: list[tuple[str, Callable[[], object] | None]] = [
            ("handoff", self.handoff.stop if self.handoff is not None else None),
            ("runtime", partial(self.runtime.close, self.settings.shutdown_grace_s)),
            ("batch_advances", self.batch_advances.close if self.batch_advances is not None else None),
            ("relay", self.relay.stop if self.relay is not None else None),
            ("local_deltas", self.local_deltas.close if self.local_deltas is not None else None),
            ("health_file", self.health_file.close if self.health_file is not None else None),
            ("providers", self.providers.close),
            ("webhook_sender", self.sender.close),
            ("database", self.db.dispose),
            ("redis", self.redis.close if self.redis is not None else None),
        ]
        for name, step in steps:
            if step is None:
                continue
            try:
                step()
            except Exception:
                log.warning("worker_close_step_failed", step=name, exc_info=True)
        log.info("worker_closed", seconds=round(time.monotonic() - started, 3))


_resources: WorkerResources | None = None
_lock = threading.Lock()


def init_resources() -> WorkerResources:
    """Make this process's engine, SDK clients and executor (idempotent)."""
    global _resources
    with _lock:
        if _resources is None:
            from switchyard.workers.celery_app import app

            settings = get_settings()
            # Before any engine or client is made: the instrumentations patch their constructors.
            tracing.setup_tracing(settings, "switchyard-worker")
            config = load_config(settings.config)
            redis_client = shared_client(settings.redis_url) if settings.redis_url else None
            db = Database(settings)
            providers = ProviderSet(config)
            on_finished = partial(signal_done, redis_client) if redis_client is not None else None
            limits = RateLimits(settings.redis_url)
            store: HealthStore
            local_deltas, health_file = None, None
            if redis_client is not None:
                store = health_store(redis_client)
            else:
                # Embedded mode: chunks go to this machine's API processes over local sockets, and the counts
                # behind `GET /v1/providers` to a file the API reads.
                local_deltas = LocalDeltaSender(delta_folder(settings.data_dir))
                store, health_file = written_store(settings.data_dir, config, limits)
            dispatcher = CeleryDispatcher(app)
            sender = WebhookSender(
                timeout_s=settings.webhook_timeout_s,
                max_response_bytes=settings.webhook_max_response_bytes,
                allow_private=settings.webhook_allow_private,
            )
            quotas = Quotas(config, db, redis_client, reservation_ttl_s=settings.reservation_ttl_s)
            # Tasks end here: their reservations are settled through this process's Redis client.
            install_settler(quotas)
            # Answers scrubbed in `hash` mode here hash as the API's requests do.
            load_hash_key(settings)
            engine = Engine(config, dispatcher, quotas, WorkflowLimits.from_settings(settings))
            # What advancing batches needs is made on first use, by the resources made below.
            batch_advances = LocalBatchAdvancer(db, lambda: get_resources().batches(), dispatcher)
            executor = Executor(
                settings,
                config,
                db,
                providers,
                Router(
                    config, DeploymentHealth(store), limits, VersionWeights(config, db, settings.model_weights_cache_s)
                ),
                LocalAdvancer(db, engine, dispatcher),
                on_finished=on_finished,
                deltas=partial(publish_delta, redis_client) if redis_client is not None else local_deltas,
                dispatch=dispatcher,
                batch_advancer=ThrottledBatchAdvancer(batch_advances),
            )
            _resources = WorkerResources(
                settings=settings,
                config=config,
                db=db,
                providers=providers,
                executor=executor,
                runtime=Runtime(
                    executor,
                    max_in_flight=settings.max_in_flight,
                    batch_max_in_flight=settings.batch_max_in_flight,
                    # The blocking steps hold a database connection each: no more threads than connections.
                    blocking_threads=settings.db_pool_size,
                ),
                engine=engine,
                dispatcher=dispatcher,
                redis=redis_client,
                sender=sender,
                deliverer=Deliverer(db, sender, settings),
                local_deltas=local_deltas,
                health_file=health_file,
                batch_advances=batch_advances,
            )
            if health_file is not None:
                health_file.start()
        return _resources


def get_resources() -> WorkerResources:
    return _resources or init_resources()


@signals.worker_process_init.connect
def _on_child_start(**_: object) -> None:
    # Prefork children: whatever the parent made before the fork must not be shared.
    global _resources
    _resources = None
    resources = init_resources()
    from switchyard.workers.celery_app import app

    resources.start_handoff(app.amqp.queues.consume_from)


@signals.worker_ready.connect
def _on_worker_ready(sender: object = None, **_: object) -> None:
    # Thread and solo pools run tasks in this very process: make the resources before the first task.
    # A prefork parent makes none; its children would inherit open connections.
    pool = getattr(sender, "pool", None)
    if pool is not None and type(pool).__module__.endswith("prefork"):
        return
    resources = init_resources()
    app = getattr(sender, "app", None)
    if app is not None:
        resources.start_handoff(app.amqp.queues.consume_from)
    if app is not None and CONTROL in app.amqp.queues.consume_from:
        # Control workers carry the event relay (one leads at a time; the others stand by).
        resources.start_relay()


@signals.worker_shutdown.connect
def _on_shutdown(**_: object) -> None:
    if _resources is not None:
        _resources.close()
    tracing.shutdown()
