"""The FastAPI application: resources made in the lifespan, one error shape, a body-size limit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
import redis.asyncio
import structlog
from fastapi import Depends, FastAPI

from switchyard.core.config import load_config
from switchyard.core.db import Database, async_pool
from switchyard.core.logs import configure_logging
from switchyard.core.redis_pool import shared_client
from switchyard.events.feed import EventHub
from switchyard.events.local_bus import delta_folder
from switchyard.files.storage import storage_for
from switchyard.gateway_api.api_docs import install_docs
from switchyard.gateway_api.errors import install_error_handlers
from switchyard.gateway_api.holds import TenantCounter, Waiters
from switchyard.gateway_api.input_guard import reject_unstorable_strings
from switchyard.gateway_api.key_events import KeyEvents, apply
from switchyard.gateway_api.middleware import BodySizeLimit
from switchyard.gateway_api.open_streams import OpenStreams
from switchyard.gateway_api.routes import (
    audit,
    batches,
    budget,
    events,
    files,
    health,
    keys,
    metrics,
    models,
    openai,
    predict,
    providers,
    tasks,
    tenant,
    usage,
    webhooks,
    workflows,
)
from switchyard.gateway_api.state import ApiState, KeyCache
from switchyard.gateway_api.ws_slots import ConnectionSlots
from switchyard.guardrails.pii.keys import load_hash_key
from switchyard.ml.catalog import model_signatures
from switchyard.ml.images import set_pixel_limit
from switchyard.observability.http import RequestMetrics
from switchyard.observability.metrics import families
from switchyard.observability.request_id import RequestId
from switchyard.observability.tracing import instrument_app, setup_tracing
from switchyard.providers.health import DeploymentHealth, health_store
from switchyard.providers.health_snapshots import WorkerSnapshots, health_folder
from switchyard.providers.limits import RateLimits
from switchyard.providers.status import LimitsView
from switchyard.settings import Settings, get_settings
from switchyard.shedding.service import Shedder
from switchyard.tasks.completion import Completions
from switchyard.tasks.transitions import install_settler
from switchyard.tenancy.invalidation import Announcer, Message
from switchyard.tenancy.jwt_auth import JwtVerifier
from switchyard.tenancy.quotas.service import Quotas
from switchyard.tenancy.tickets import Tickets
from switchyard.workers.celery_app import make_celery
from switchyard.workers.dispatch import PublishQueue
from switchyard.workers.handoff import HandoffOut
from switchyard.workflows.engine import Engine
from switchyard.workflows.rendering import WorkflowLimits
from switchyard.workflows.service import load_shared

log = structlog.get_logger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    # In each process uvicorn starts (`--workers N` spawns fresh interpreters).
    configure_logging(settings.log_level, settings.log_format)
    # Before any engine or client is made: the instrumentations patch their constructors.
    setup_tracing(settings, "switchyard-api")
    # Refuse a bad config file before serving anything.
    config = load_config(settings.config)
    signatures = model_signatures(config)
    # Pillow's own decompression-bomb guard, at the limit the API checks image headers against.
    set_pixel_limit(settings.max_image_pixels)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Endpoints are sync (they share services with the workers) and run in threads. More threads than
        # database connections would only queue on the pool while contending for the GIL.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.db_pool_size + settings.db_max_overflow
        celery = make_celery(settings)
        redis_client = shared_client(settings.redis_url) if settings.redis_url else None
        db = Database(settings)
        quotas = Quotas(
            config,
            db,
            redis_client,
            redis.asyncio.Redis.from_url(settings.redis_url) if settings.redis_url else None,
            reservation_ttl_s=settings.reservation_ttl_s,
        )
        # This process ends tasks too (a cancel): their reservations are settled through it.
        install_settler(quotas)
        # Requests scrubbed in `hash` mode: the key is read (or made, in the data directory) once, here.
        load_hash_key(settings)
        # Synchronous calls go by the hand-off (workers/handoff.py) when a worker takes them.
        handoff = HandoffOut(redis_client) if settings.handoff and redis_client is not None else None
        dispatcher = PublishQueue(celery, handoff)
        pg = async_pool(settings)
        health: DeploymentHealth
        limits: LimitsView
        if redis_client is not None:
            health, limits = DeploymentHealth(health_store(redis_client)), RateLimits(settings.redis_url)
        else:
            # Embedded mode: this process makes no calls; the workers write what they count to files.
            snapshots = WorkerSnapshots(health_folder(settings.data_dir))
            health, limits = DeploymentHealth(snapshots), snapshots
        if pg is not None:
            await pg.open()
        key_cache = KeyCache(ttl_s=settings.api_key_cache_s, short_ttl_s=settings.api_key_cache_unsubscribed_s)
        files_storage = storage_for(settings)
        streams = OpenStreams(db, settings.stream_key_recheck_s)

        def changed(message: Message) -> None:
            # Principals changed (a key revoked, say): the cache forgets them, open streams check their key.
            apply(key_cache, message)
            streams.changed(message)

        try:
            await anyio.to_thread.run_sync(files_storage.check)
        except Exception as exc:
            # Said, not fatal: a storage that is down for a moment must not keep the API from serving everything
            # else (the Files API answers 503 until it is back; /readyz shows it as `checks.files`).
            log.warning("files_storage_unavailable_at_start", error=f"{type(exc).__name__}: {exc}")

        # Shared definitions (a bad file stops start-up with its problem named); parsing them blocks.
        def load_workflows() -> None:
            with db.transaction() as tx:
                load_shared(tx, config, settings.shared_workflows)

        await anyio.to_thread.run_sync(load_workflows)
        state = ApiState(
            settings=settings,
            config=config,
            signatures=signatures,
            db=db,
            celery=celery,
            dispatcher=dispatcher,
            pg=pg,
            redis=redis_client,
            completions=Completions(
                db,
                settings.redis_url,
                max_waiters=settings.sync_max_waiters,
                redis_timeout_s=settings.sync_redis_timeout_s,
            ),
            engine=Engine(config, dispatcher, quotas, WorkflowLimits.from_settings(settings)),
            keys=key_cache,
            hub=EventHub(
                db, settings.redis_url, poll_s=settings.feed_poll_s, deltas_dir=delta_folder(settings.data_dir)
            ),
            ws_slots=ConnectionSlots(settings.redis_url, settings.ws_max_connections_per_tenant),
            sse_slots=ConnectionSlots(settings.redis_url, settings.sse_max_streams_per_tenant, name="sse"),
            waiters=Waiters(settings.sync_max_waiters, settings.sync_max_waiters_per_tenant),
            replays=TenantCounter(settings.ws_max_replays_per_tenant),
            streams=streams,
            tickets=Tickets(settings.redis_url, settings.stream_ticket_ttl_s),
            health=health,
            limits=limits,
            files=files_storage,
            jwt=JwtVerifier(settings) if settings.jwt_jwks_url else None,
            announcer=Announcer(redis_client, local=changed),
            quotas=quotas,
            shedder=Shedder(settings),
        )
        await state.hub.start()
        await streams.start()
        await state.shedder.start()
        key_events = KeyEvents(key_cache, settings.redis_url, on_change=streams.changed) if settings.redis_url else None
        if key_events is not None:
            await key_events.start()
        app.state.switchyard = state
        try:
            yield
        finally:
            if key_events is not None:
                await key_events.close()
            await state.aclose()

    app = FastAPI(
        title="Switchyard",
        version="0.1.0",
        summary="Orchestration service for AI inference",
        lifespan=lifespan,
        # Served by install_docs, with Swagger UI's and ReDoc's assets from this process rather than a CDN.
        docs_url=None,
        redoc_url=None,
        # Before any endpoint: a string Postgres cannot store is a 4xx naming its field, never a 500.
        dependencies=[Depends(reject_unstorable_strings)],
        # FastAPI's own OpenTelemetry hooks looked up the global providers (reading the environment) on every
        # request, ~4 % of the API's CPU under load; our server spans come from the FastAPI instrumentation
        # when SWITCHYARD_TRACING is on (observability/tracing.py), metrics from our middleware.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_error_handlers(app)
    # Requests are matched against the routes in this order: the synchronous endpoints and tasks (the traffic)
    # first, so that a chat call is not tried against every admin route before its own.
    routers = [
        openai.router,
        predict.router,
        tasks.router,
        health.router,
        models.router,
        workflows.router,
        events.router,
        webhooks.router,
        providers.router,
        files.router,
        usage.router,
        batches.router,
        keys.router,
        tenant.router,
        audit.router,
        budget.router,
    ]
    for router in routers:
        app.include_router(router)
    install_docs(app, routers)
    # File uploads stream to storage: they have a limit of their own.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, uploads={"/v1/files": settings.max_file_bytes})
    measured = families()
    if measured is not None:
        app.include_router(metrics.router)
        # Outermost, so that a 413 from the size limit is counted too.
        app.add_middleware(RequestMetrics, families=measured)
    # Outermost of ours, so a 413 carries the id too (the tracing middleware wraps everything).
    app.add_middleware(RequestId)
    instrument_app(app)
    return app
