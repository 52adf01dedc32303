"""Deployment health in embedded mode (no Redis): what `GET /v1/providers` shows.

Each worker process keeps its breakers and counts in memory there, and the API process makes no calls, so it
would have nothing to show. Each worker therefore writes its counts, and the room its rate limits have left,
to `<data_dir>/health/<pid>.json`: from a thread of its own, within about a second of a change but never more
than once a second, and every few seconds anyway; a file is replaced whole (write, then rename), so a
reader never sees half of one. The API merges the files of live workers when asked. Served mode has none of
this: its counts are in Redis, shared by every process.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import structlog

from switchyard.core.config import AppConfig, Deployment
from switchyard.core.pids import owner_dead
from switchyard.providers.health import EndedCall, MemoryHealthStore, Stats
from switchyard.providers.limits import RateLimits

log = structlog.get_logger(__name__)

# Written this often even with nothing new: a file older than MAX_AGE_S is one whose writer is gone.
_HEARTBEAT_S = 5.0
MAX_AGE_S = 30.0
# However many calls end meanwhile, a worker writes its file at most this often.
_MIN_INTERVAL_S = 1.0
# `GET /v1/providers` reads each deployment in turn: the files are read once for all of them.
_READ_CACHE_S = 0.5


def health_folder(data_dir: Path) -> Path:
    """Where the workers of this data directory write their counts."""
    return data_dir / "health"


class SnapshotWriter:
    """A worker's file: `changed()` after every change (cheap: it sets an event), `close()` on shutdown."""

    def __init__(self, folder: Path, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.folder = folder
        self.path = folder / f"{os.getpid()}.json"
        self._snapshot = snapshot
        self._changed = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sy-health-file", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def changed(self) -> None:
        self._changed.set()

    def close(self) -> None:
        self._stopping.set()
        self._changed.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def write(self) -> None:
        data = orjson.dumps({"written_at": time.time(), **self._snapshot()})
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        partial.write_bytes(data)
        os.replace(partial, self.path)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._changed.wait(_HEARTBEAT_S)
            if self._stopping.is_set():
                return
            self._changed.clear()
            try:
                self.write()
            except Exception:
                log.warning("health_file_failed", path=str(self.path), exc_info=True)
            self._stopping.wait(_MIN_INTERVAL_S)


def _limited(config: AppConfig) -> list[Deployment]:
    deployments: dict[str, Deployment] = {}
    for model in config.models.values():
        for dep in model.deployments:
            if dep.rpm is not None or dep.tpm is not None:
                deployments.setdefault(dep.name, dep)
    return list(deployments.values())


def written_store(data_dir: Path, config: AppConfig, limits: RateLimits) -> tuple[MemoryHealthStore, SnapshotWriter]:
    """A worker's in-memory health store whose counts (and its rate limits' room) go to its file; start the
    writer once the process is set up, close it on shutdown."""
    store = MemoryHealthStore()
    limited = _limited(config)

    def snapshot() -> dict[str, Any]:
        return {"health": store.snapshot(), "usage": {dep.name: limits.usage(dep) for dep in limited}}

    writer = SnapshotWriter(health_folder(data_dir), snapshot)
    store.on_change = writer.changed
    return store, writer


def _least(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


class WorkerSnapshots:
    """The API's view in embedded mode: a read-only health store over the workers' files, and the room of
    each rate limit as the workers last wrote it (the least any of them has: each counts its own calls)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._loaded_at = -_READ_CACHE_S
        self._merged = MemoryHealthStore()
        self._usage: dict[str, dict[str, int | None]] = {}
        self._lock = threading.Lock()

    def _load(self) -> tuple[MemoryHealthStore, dict[str, dict[str, int | None]]]:
        with self._lock:
            if time.monotonic() - self._loaded_at < _READ_CACHE_S:
                return self._merged, self._usage
            merged = MemoryHealthStore()
            usage: dict[str, dict[str, int | None]] = {}
            for path in self.folder.glob("*.json"):
                if owner_dead(path):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()  # a worker that was killed: nobody else removes it
                    continue
                try:
                    data = orjson.loads(path.read_bytes())
                except (OSError, orjson.JSONDecodeError):
                    continue  # removed meanwhile
                if time.time() - float(data["written_at"]) > MAX_AGE_S:
                    continue
                merged.merge(data["health"])
                for name, room in data["usage"].items():
                    seen = usage.setdefault(name, room)
                    for field in ("rpm_remaining", "tpm_remaining"):
                        seen[field] = _least(seen.get(field), room.get(field))
            self._merged, self._usage, self._loaded_at = merged, usage, time.monotonic()
            return merged, usage

    def read(self, names: list[str], now: float, bucket_s: float, keep: int = 20) -> list[Stats]:
        """The merged stats of each deployment, as `HealthStore.read`."""
        return self._load()[0].read(names, now, bucket_s, keep)

    def usage(self, dep: Deployment) -> dict[str, int | None]:
        """As `RateLimits.usage`; a deployment no worker counted has all its room."""
        room = self._load()[1].get(dep.name)
        return dict(room) if room is not None else {"rpm_remaining": dep.rpm, "tpm_remaining": dep.tpm}

    # The writing side of a health store: the API makes no calls, so nothing here may be written.

    def begin(self, name: str, call_id: str, lapses_at: float) -> None:
        raise _read_only()

    def end(self, call: EndedCall, now: float, bucket_s: float) -> Stats:
        raise _read_only()

    def set_state(self, name: str, state: str, until: float) -> None:
        raise _read_only()

    def take_probe(self, name: str, call_id: str, ttl_s: float) -> bool:
        raise _read_only()

    def reset_window(self, name: str, now: float, bucket_s: float) -> None:
        raise _read_only()

    def next_turn(self, model: str) -> int:
        raise _read_only()


def _read_only() -> NotImplementedError:
    return NotImplementedError("the API process only reads the workers' health files")
