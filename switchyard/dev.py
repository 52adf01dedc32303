"""`switchyard dev`: the whole service on one machine with embedded defaults.

SQLite in `.switchyard/`, the filesystem Celery transport, one real worker process (all queues; it leads the
periodic duties), the fake provider, migrations applied, a fresh admin key. The same code paths as production.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import httpx

from switchyard.core.db import Database
from switchyard.core.migrate import upgrade
from switchyard.settings import Settings
from switchyard.tenancy.service import create_key


def _wait_http(url: str, procs: list[subprocess.Popen[bytes]], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise click.ClickException(f"a child process exited early ({proc.args!r})")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise click.ClickException(f"{url} did not answer within {timeout_s:.0f}s")


def run_dev(*, host: str, port: int, fake_port: int) -> None:
    data_dir = Path(os.environ.get("SWITCHYARD_DATA_DIR", ".switchyard")).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("SWITCHYARD_DATA_DIR", str(data_dir))
    env.setdefault("SWITCHYARD_FAKE_URL", f"http://127.0.0.1:{fake_port}")
    # A short sweep interval keeps embedded mode responsive after restarts.
    env.setdefault("SWITCHYARD_SWEEP_INTERVAL_S", "2")
    # The one machine is the operator's: the `dev` tenant (the key printed below) may change model weights.
    env.setdefault("SWITCHYARD_OPERATOR_TENANTS", '["dev"]')
    os.environ.update(env)
    settings = Settings()

    # The database defaults to the SQLite file in the data directory, as for every other command run here.
    env.setdefault("SWITCHYARD_DATABASE_URL", settings.database_url)
    upgrade(settings.sqlalchemy_url)
    db = Database(settings, pool_size=1)
    with db.transaction() as tx:
        _, key = create_key(tx.session, "dev", "admin")
    db.dispose()

    cli = [sys.executable, "-m", "switchyard"]
    procs: list[subprocess.Popen[bytes]] = []

    def stop(*_: object) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        # The worker lets running calls end for shutdown_grace_s, then hands the rest back and removes its
        # health file: it gets that long and a margin before it is killed.
        deadline = time.monotonic() + settings.shutdown_grace_s + 10
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                # Said, so that what it left behind (a health file, a socket) has its reason in the log.
                click.echo(f"switchyard dev: {proc.args!r} did not stop in time; killed", err=True)
                proc.kill()

    def on_term(*_: object) -> None:
        stop()
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    try:
        procs.append(subprocess.Popen([*cli, "fake-provider", "--port", str(fake_port)], env=env))
        _wait_http(f"http://127.0.0.1:{fake_port}/healthz", procs)
        procs.append(subprocess.Popen([*cli, "worker", "--concurrency", "32"], env=env))
        procs.append(subprocess.Popen([*cli, "api", "--host", host, "--port", str(port)], env=env))
        url = f"http://{host}:{port}"
        _wait_http(f"{url}/healthz", procs)
        click.echo(f"Switchyard is running (embedded mode: {settings.database_url}, broker in {data_dir}).")
        click.echo(f"URL: {url}")
        click.echo(f"API docs: {url}/docs")
        click.echo("Try:")
        click.echo(
            f"  curl -s {url}/v1/tasks -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' "
            '-d \'{"type": "chat", "model": "chat-default", '
            '"input": {"messages": [{"role": "user", "content": "Hello"}]}}\''
        )
        click.echo(f"API key: {key}", nl=True)
        sys.stdout.flush()
        while all(proc.poll() is None for proc in procs):
            time.sleep(0.5)
        raise click.ClickException("a child process stopped; shutting down")
    except KeyboardInterrupt:
        pass
    finally:
        stop()
