"""The `switchyard` command: run the API, workers, scheduler, migrations, keys, the fake provider, Flower, dev."""

from __future__ import annotations

import ipaddress
import os
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from pydantic import ValidationError

from switchyard.core.config import load_config
from switchyard.core.errors import ConfigError
from switchyard.settings import Settings, get_settings
from switchyard.workers.queues import ALL, BATCH, ML, PROVIDER


def _settings() -> Settings:
    """The process settings, or one line naming the variable that is wrong."""
    try:
        return get_settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"SWITCHYARD_{'_'.join(str(p) for p in err['loc']).upper() or '*'}: "
            f"{err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        raise click.ClickException(f"invalid setting: {problems}") from None


def _check_config() -> None:
    """Stop the process with the file, the key and the problem when the config cannot be used (the models file,
    or a files storage this installation cannot reach: S3 configured without the s3 extra)."""
    from switchyard.files.storage import storage_for

    try:
        load_config(_settings().config)
        storage_for(_settings())
    except ConfigError as exc:
        # One problem is one line (file: key: problem); several are one line each.
        click.echo(f"switchyard: configuration error: {exc}", err=True)
        sys.exit(2)


def _check_database() -> None:
    """Refuse to run against an embedded database that does not exist: opening it would create an empty file
    beside the real one (the classic symptom: `no such table` from a command run in another folder)."""
    settings = _settings()
    path = settings.sqlite_path
    if path is not None and not path.is_file():
        raise click.ClickException(
            f"no database at {path}: start `switchyard dev` in this folder, run `switchyard migrate`, or set "
            "SWITCHYARD_DATABASE_URL (or SWITCHYARD_DATA_DIR) to the one in use"
        )


def _one_line(exc: BaseException) -> str:
    """What went wrong, in one line a user can act on."""
    from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

    url = _settings().database_url.split("@")[-1]
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, (OperationalError, ProgrammingError)) and (
        "no such table" in text or ("does not exist" in text and "relation" in text)
    ):
        return f"the database ({url}) has no Switchyard tables: run `switchyard migrate` first ({text})"
    if isinstance(exc, DBAPIError):
        return f"database error ({url}): {text}"
    try:
        import redis

        if isinstance(exc, redis.ConnectionError):
            return f"cannot reach Redis ({_settings().redis_url}): {text}"
    except ImportError:  # pragma: no cover - redis is a dependency
        pass
    return f"{type(exc).__name__}: {text}"


class _Main(click.Group):
    """Every command's failure is one line on stderr, never a traceback (SWITCHYARD_DEBUG=1 shows it)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            if os.environ.get("SWITCHYARD_DEBUG"):
                raise
            click.echo(f"switchyard: error: {_one_line(exc)}", err=True)
            sys.exit(1)


@click.group(cls=_Main)
def main() -> None:
    """Switchyard: orchestration for AI inference."""
    from switchyard.core.logs import configure_logging

    configure_logging(_settings().log_level, _settings().log_format)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--fake-port", default=8911, show_default=True, type=int)
def dev(host: str, port: int, fake_port: int) -> None:
    """Everything on one machine with embedded defaults (SQLite, local broker, a worker, the fake provider)."""
    from switchyard.dev import run_dev

    run_dev(host=host, port=port, fake_port=fake_port)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int, help="uvicorn worker processes")
def api(host: str, port: int, workers: int) -> None:
    """The HTTP/WebSocket front (uvicorn); `GET /metrics` serves every process's metrics."""
    if workers > 1 and _settings().metrics:
        from switchyard.observability.exposition import prepare_multiprocess

        # Before prometheus-client is imported anywhere: the uvicorn processes inherit it and share their values.
        prepare_multiprocess(_settings().data_dir, f"api-{port}")
    import uvicorn

    from switchyard.gateway_api.http_protocol import http_protocol

    _check_config()
    _check_database()
    uvicorn.run(
        "switchyard.gateway_api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        # Logging stays as configure_logging set it (the app factory sets it again in each worker process).
        log_config=None,
        access_log=False,
        # Compressing is done per socket: one event sent to a thousand listeners is compressed a thousand times.
        ws_per_message_deflate=_settings().ws_compression,
        # Bounds on what a client can make a process buffer (docs/api.md, "Stream limits"): a WebSocket frame
        # (a larger one closes the connection with 1009), a request's head (431).
        ws_max_size=_settings().ws_max_frame_bytes,
        http=http_protocol(),
        h11_max_incomplete_event_size=_settings().max_header_bytes,
    )


def _pool_for(queues: list[str]) -> str:
    # Everything waits on the network, and ONNX Runtime releases the GIL while it computes: threads, so that
    # concurrent predictions in one process can be merged into batches (intra-op threads use the cores).
    return "threads"


@main.command()
@click.option("--queues", default=",".join(ALL), show_default=True, help="comma-separated queue names")
@click.option(
    "--concurrency",
    type=int,
    default=None,
    help="Celery pool size (default: 64 threads with the provider or ml queue, else 16; cores for prefork); "
    "provider and ML calls run on the worker's event loop, bounded by --max-in-flight, not by this",
)
@click.option(
    "--max-in-flight",
    type=int,
    default=None,
    help="calls this worker process has in flight at once (default: SWITCHYARD_MAX_IN_FLIGHT, 1000)",
)
@click.option("--pool", type=click.Choice(["threads", "prefork", "solo"]), default=None)
# Kept so that existing command lines still start: every worker now competes to run the periodic duties.
@click.option("--beat", is_flag=True, hidden=True, help="no longer needed (every worker runs the periodic duties)")
@click.option("--loglevel", default=None, help="default: SWITCHYARD_LOG_LEVEL (INFO)")
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="serve this worker's Prometheus metrics on this port (default: SWITCHYARD_METRICS_PORT; unset: none)",
)
def worker(
    queues: str,
    concurrency: int | None,
    max_in_flight: int | None,
    pool: str | None,
    beat: bool,
    loglevel: str | None,
    metrics_port: int | None,
) -> None:
    """A Celery worker; one worker at a time also leads the periodic duties (sweeps)."""
    _check_config()
    _check_database()
    loglevel = loglevel or _settings().log_level
    if loglevel.upper() != _settings().log_level.upper():
        from switchyard.core.logs import configure_logging

        configure_logging(loglevel, _settings().log_format)
    if beat:
        click.echo("switchyard: --beat is no longer needed; every worker runs the periodic duties", err=True)
    names = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = sorted(set(names) - set(ALL))
    if unknown:
        raise click.BadParameter(f"unknown queue(s) {', '.join(unknown)}; known: {', '.join(ALL)}")
    from switchyard.workers import batch_process

    if os.environ.get(batch_process.PARENT_ENV):
        batch_process.become_child(_settings())
    split = batch_process.splits_off(names, _settings())
    if split:
        names = [name for name in names if name != BATCH]
    pool = pool or _pool_for(names)
    if concurrency is None:
        concurrency = (os.cpu_count() or 1) if pool == "prefork" else 64 if (PROVIDER in names or ML in names) else 16
    if max_in_flight is not None:
        if max_in_flight < 1:
            raise click.BadParameter("must be at least 1", param_hint="--max-in-flight")
        # Read by the worker's settings when its resources are made.
        os.environ["SWITCHYARD_MAX_IN_FLIGHT"] = str(max_in_flight)
    if pool == "prefork":
        # ONNX Runtime sizes its threads to the cores divided among the processes (ml/batching.py).
        os.environ["SWITCHYARD_ML_PROCESSES"] = str(concurrency)
    metrics_port = metrics_port or _settings().metrics_port
    if metrics_port is not None and _settings().metrics:
        from switchyard.observability.exposition import serve_worker_metrics

        # Several processes (prefork children, the batch process) share their values through files.
        serve_worker_metrics(_settings(), metrics_port, shared=pool == "prefork" or split)
    child = None
    if split:
        child = batch_process.BatchProcess(
            batch_process.child_argv(pool, concurrency, loglevel),
            batch_process.child_env(dict(os.environ)),
            stop_timeout_s=_settings().shutdown_grace_s + 10,
        )
        child.start()
    from switchyard.workers.celery_app import app

    argv = [
        "worker",
        "-Q",
        ",".join(names),
        "-P",
        pool,
        "-c",
        str(concurrency),
        "--loglevel",
        loglevel,
        "-n",
        f"switchyard-{'-'.join(names)}-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    try:
        app.worker_main(argv)
    finally:
        if child is not None:
            child.stop()


@main.command()
@click.option("--loglevel", default=None, help="default: SWITCHYARD_LOG_LEVEL (INFO)")
def scheduler(loglevel: str | None) -> None:
    """Periodic duties in a process of their own (optional: the workers run them). It competes for the same
    leadership as the workers, so a duty never runs twice at once."""
    if loglevel:
        from switchyard.core.logs import configure_logging

        configure_logging(loglevel, _settings().log_format)
    _check_config()
    _check_database()
    from switchyard.workers.duties import run_scheduler

    run_scheduler(_settings())


@main.command()
def migrate() -> None:
    """`alembic upgrade head` on the configured database."""
    from switchyard.core.migrate import upgrade

    settings = _settings()
    if settings.sqlite_path is not None:
        settings.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    upgrade(settings.sqlalchemy_url)
    click.echo(f"database is at the latest revision ({settings.database_url.split('@')[-1]})")


@main.group()
def keys() -> None:
    """API keys."""


_DURATION = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _expiry(expires_in: str | None, expires_at: datetime | None) -> datetime | None:
    """The expiry of --expires-in (`90s`, `30m`, `12h`, `30d`) or --expires-at (UTC unless a zone is given)."""
    if expires_in is not None and expires_at is not None:
        raise click.UsageError("give --expires-in or --expires-at, not both")
    if expires_in is not None:
        unit = expires_in[-1:].lower()
        number = expires_in[:-1]
        if unit not in _DURATION or not number.isdigit() or int(number) == 0:
            raise click.BadParameter(f"'{expires_in}' is not a duration such as 90s, 30m, 12h or 30d")
        return datetime.now(UTC) + timedelta(seconds=int(number) * _DURATION[unit])
    if expires_at is not None:
        return expires_at if expires_at.tzinfo is not None else expires_at.replace(tzinfo=UTC)
    return None


@keys.command("create")
@click.option("--tenant", required=True, help="tenant name (created if needed)")
@click.option("--role", type=click.Choice(["admin", "member", "viewer"]), default="admin", show_default=True)
@click.option("--name", default=None, help="a name to tell the key apart")
@click.option("--models", default=None, help="comma-separated logical models the key may call (default: all)")
@click.option("--tier", default=None, help="a tier of the config file's `tiers:`")
@click.option("--expires-in", default=None, help="refused after this long: 90s, 30m, 12h, 30d")
@click.option("--expires-at", type=click.DateTime(), default=None, help="refused from then on (UTC)")
def keys_create(
    tenant: str,
    role: str,
    name: str | None,
    models: str | None,
    tier: str | None,
    expires_in: str | None,
    expires_at: datetime | None,
) -> None:
    """Create a key; the key is the last line of output (it is shown only once)."""
    from switchyard.audit.service import CLI_ACTOR
    from switchyard.core.db import Database
    from switchyard.core.errors import InvalidRequest
    from switchyard.tenancy.service import check_expiry, check_models, check_tier, create_key

    _check_database()
    expiry = _expiry(expires_in, expires_at)
    model_list = [m.strip() for m in models.split(",") if m.strip()] if models is not None else None
    try:
        config = load_config(_settings().config)
        check_models(config, model_list, param="--models")
        check_tier(config, tier, param="--tier")
        check_expiry(expiry, param="--expires-at")
    except (ConfigError, InvalidRequest) as exc:
        raise click.ClickException(f"{getattr(exc, 'param', None) or 'config'}: {exc}") from None
    db = Database(_settings(), pool_size=1)
    with db.transaction() as tx:
        key, plain = create_key(
            tx.session,
            tenant,
            role,  # type: ignore[arg-type]
            name=name,
            models=model_list,
            tier=tier,
            expires_at=expiry,
            created_by=CLI_ACTOR,
        )
        click.echo(f"created {role} key {key.id} for tenant '{tenant}' ({key.tenant_id})")
    db.dispose()
    click.echo(plain)


@keys.command("list")
@click.option("--tenant", required=True, help="tenant name")
@click.option("--revoked", is_flag=True, help="show revoked keys too")
def keys_list(tenant: str, revoked: bool) -> None:
    """The tenant's keys, newest first: id, prefix, role, name, tier, expiry, revocation (never the keys)."""
    from switchyard.core.db import Database
    from switchyard.tenancy.repository import key_page, tenant_by_name

    _check_database()
    db = Database(_settings(), pool_size=1)
    with db.sessions() as session:
        found = tenant_by_name(session, tenant)
        if found is None:
            raise click.ClickException(f"no tenant '{tenant}'")
        rows = key_page(session, found.id, revoked=revoked, after=None, limit=100_000)
    db.dispose()
    click.echo("\t".join(("id", "prefix", "role", "name", "tier", "expires_at", "revoked_at")))
    for key in rows:
        cells = (key.id, key.prefix, key.role, key.name, key.tier, key.expires_at, key.revoked_at)
        click.echo("\t".join("-" if c is None else c.isoformat() if isinstance(c, datetime) else str(c) for c in cells))


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key: every API process refuses it from its next request (recorded in the audit log as `cli`)."""
    from switchyard.audit.service import CLI_ACTOR
    from switchyard.core.db import Database
    from switchyard.core.errors import NotFound
    from switchyard.core.redis_pool import shared_client
    from switchyard.tenancy.invalidation import Announcer
    from switchyard.tenancy.service import revoke_key

    _check_database()
    settings = _settings()
    client = shared_client(settings.redis_url) if settings.redis_url else None
    db = Database(settings, pool_size=1)
    try:
        with db.transaction() as tx:
            key = revoke_key(tx, None, key_id, CLI_ACTOR, Announcer(client))
    except NotFound as exc:
        raise click.ClickException(exc.message) from None
    finally:
        db.dispose()
        if client is not None:
            client.close()
    click.echo(f"revoked key {key.id} ({key.prefix}...) at {key.revoked_at.isoformat() if key.revoked_at else '-'}")


@main.command("fake-provider")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8911, show_default=True, type=int)
@click.option("--latency-ms", default=0, show_default=True, type=int)
@click.option("--fail-rate", default=0.0, show_default=True, type=float)
@click.option("--fail-status", default=500, show_default=True, type=int)
@click.option(
    "--context-window",
    "context_windows",
    multiple=True,
    metavar="MODEL=N",
    help="a model's context window in tokens: longer prompts get a context-length error (repeatable)",
)
def fake_provider(
    host: str, port: int, latency_ms: int, fail_rate: float, fail_status: int, context_windows: tuple[str, ...]
) -> None:
    """The deterministic fake model server (OpenAI, Azure OpenAI and Anthropic APIs, Bedrock and Vertex)."""
    from switchyard.fake_provider.app import run

    windows: dict[str, int] = {}
    for spec in context_windows:
        model, _, tokens = spec.rpartition("=")
        if not model or not tokens.isdigit():
            raise click.BadParameter(f"'{spec}' is not MODEL=N", param_hint="--context-window")
        windows[model] = int(tokens)
    run(
        host=host,
        port=port,
        latency_ms=latency_ms,
        fail_rate=fail_rate,
        fail_status=fail_status,
        context_windows=windows,
    )


def _loopback(address: str) -> bool:
    """True for an address only this machine reaches (`""`, Flower's default, is every interface)."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        # A host name other than localhost may resolve to any interface.
        return False


@main.command()
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="interface to listen on; any but loopback needs SWITCHYARD_FLOWER_BASIC_AUTH",
)
@click.option("--port", default=5555, show_default=True, type=int)
@click.option(
    "--save-interval",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="seconds between saves of Flower's state to <data dir>/flower.db (0: only when Flower stops)",
)
def flower(address: str, port: int, save_interval: float) -> None:
    """Flower on the same broker: every message by task type and model, its task, run and batch ids in its args;
    its state kept in the data directory across restarts."""
    settings = _settings()
    if settings.filesystem_broker:
        # Its event queue would outlive it in the broker's folder (see Settings.send_task_events).
        raise click.ClickException(
            "Flower needs Redis (SWITCHYARD_REDIS_URL): embedded mode's filesystem broker carries no task events for it"
        )
    credentials = settings.flower_credentials
    if not credentials and not _loopback(address):
        # Flower can revoke tasks and shut workers down: never on a reachable interface without credentials.
        raise click.ClickException(
            f"Flower on {address or 'every interface'} needs credentials: set SWITCHYARD_FLOWER_BASIC_AUTH="
            "user:password, or keep --address 127.0.0.1"
        )
    db = (settings.data_dir / "flower.db").resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    from switchyard.workers.celery_app import app

    argv = [
        "flower",
        f"--address={address}",
        f"--port={port}",
        "--persistent=True",
        f"--db={db}",
        f"--state_save_interval={round(save_interval * 1000)}",
        # With task events off, Flower must not turn them on in every worker (it asks them every 5 s).
        f"--enable_events={settings.send_task_events}",
        # The args hold the task, run and batch ids a message carries: shown beside its name.
        "--tasks_columns=name,uuid,state,args,received,runtime,worker",
    ]
    if credentials:
        # In this process's arguments only, not in its command line (`ps` shows `switchyard flower`).
        argv.append(f"--basic_auth={','.join(credentials)}")
    app.start(argv)


if __name__ == "__main__":
    main()
