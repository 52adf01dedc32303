"""Serving the metrics: the multiprocess directory the CLI prepares, the text a scrape gets, a worker's server.

`switchyard api --workers N` runs N processes behind one port, and a scrape reaches one of them: each writes its
values to files in `PROMETHEUS_MULTIPROC_DIR` and whichever answers reads them all (`MultiProcessCollector`).
The directory belongs to one deployment (`<data dir>/metrics/<role>-<port>`) and is emptied when the command
starts, so counters begin at zero with the processes, as Prometheus expects of a restart. A single process
(`--workers 1`, a worker on the threads pool) keeps its values in memory.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from switchyard.settings import Settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess(data_dir: Path, name: str) -> Path:
    """Make (empty) the multiprocess directory `name` under the data directory and point prometheus-client at it.

    Call before anything imports prometheus-client (its value class is chosen at import), in the process that
    then starts the others, which inherit the variable."""
    folder = (data_dir / "metrics" / name).resolve()
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(folder)
    return folder


def multiprocess() -> bool:
    """Whether this process shares its values through a multiprocess directory."""
    return bool(os.environ.get(MULTIPROC_ENV))


def process_exited(pid: int) -> None:
    """Drop a dead process's live gauges (calls in flight) from the sum; its counters stay counted."""
    if multiprocess():
        from prometheus_client import multiprocess as mp

        mp.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def serve_worker_metrics(settings: Settings, port: int, *, shared: bool) -> None:
    """Serve a worker's metrics on `port` from a daemon thread of this process (the worker's main process).

    On the threads and solo pools the tasks, the relay and the duties run in this very process: its own registry
    is the worker's. With `shared`, several processes record (a prefork worker's children; this process and its
    batch process): they share their values through a multiprocess directory of its own, which this process
    reads at each scrape."""
    if shared:
        prepare_multiprocess(settings.data_dir, f"worker-{port}")
    from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = REGISTRY
    if shared:
        registry = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(port, addr=settings.metrics_host, registry=registry)
