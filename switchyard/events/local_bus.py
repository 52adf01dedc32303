"""Streamed text chunks (`task.delta`) between the processes of one machine, for embedded mode (no Redis).

Each API process listens on a Unix socket `<data_dir>/deltas/<pid>.sock`, removed when it stops. A worker
sends each chunk to every socket in that folder (listed at most once a second) over a connection it keeps
open, as one line: the tenant id, a space, then the very message Redis would carry (`{"delta": event}`), so
the API's feeds take both the same way.

Sending never waits: a chunk that does not fit in a connection's buffer (an API process that stopped reading)
is dropped for that process, as a lost pub/sub message would be; the task's result still has all the text.
Stream sockets rather than datagrams: Linux queues at most `net.unix.max_dgram_qlen` (10 by default)
datagrams per socket, so a burst of chunks would mostly be dropped, while a stream buffers ~200 kB.
A socket nobody listens on (its API process was killed) is removed by the first sender that finds it dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import structlog

from switchyard.core.pids import owner_dead

log = structlog.get_logger(__name__)

# Re-read the folder at most this often: API processes that start are reached within that time.
_LIST_EVERY_S = 1.0
# A line longer than this is not a chunk this module sent: the connection is dropped.
_MAX_LINE = 4 * 1024 * 1024
_NO_SIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)


def delta_folder(data_dir: Path) -> Path:
    """Where the API processes of this data directory listen."""
    return data_dir / "deltas"


class LocalDeltaSender:
    """A worker's DeltaSink in embedded mode: `sender(tenant_id, event)` from any thread."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._peers: dict[str, socket.socket] = {}
        self._listed_at = -_LIST_EVERY_S
        self._lock = threading.Lock()

    def __call__(self, tenant_id: str, event: dict[str, Any]) -> None:
        line = tenant_id.encode() + b" " + orjson.dumps({"delta": event}) + b"\n"
        with self._lock:
            now = time.monotonic()
            if now - self._listed_at >= _LIST_EVERY_S:
                self._listed_at = now
                self._list()
            for path, sock in list(self._peers.items()):
                try:
                    sent = sock.send(line, _NO_SIGNAL)
                except BlockingIOError:
                    continue  # its buffer is full: this chunk is lost to that process only
                except OSError:
                    sent = -1  # the process went away
                if sent != len(line):
                    # Gone, or half a line written: the stream can carry no more whole lines. The listener
                    # drops the half line with the connection; the next listing connects afresh.
                    self._drop(path)

    def close(self) -> None:
        with self._lock:
            for path in list(self._peers):
                self._drop(path)

    def _drop(self, path: str) -> None:
        sock = self._peers.pop(path, None)
        if sock is not None:
            sock.close()

    def _list(self) -> None:
        try:
            paths = {entry.path for entry in os.scandir(self.folder) if entry.name.endswith(".sock")}
        except FileNotFoundError:
            paths = set()
        for path in set(self._peers) - paths:
            self._drop(path)
        for path in paths - set(self._peers):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.connect(path)
            except OSError as exc:
                sock.close()
                self._forget_if_dead(path, exc)
                continue
            self._peers[path] = sock

    @staticmethod
    def _forget_if_dead(path: str, exc: OSError) -> None:
        # Refused: nobody listens. Unless its process lives (it may be between bind and listen), remove it.
        if exc.errno == errno.ECONNREFUSED and owner_dead(path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        elif exc.errno not in (errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN):
            log.warning("delta_socket_unreachable", path=path, error=str(exc))


class _Lines(asyncio.Protocol):
    """One sender's connection: complete lines go to `on_line(tenant_id, message)`."""

    def __init__(self, on_line: Callable[[str, bytes], None], open_ones: set[asyncio.BaseTransport]) -> None:
        self.on_line = on_line
        self.open_ones = open_ones
        self.pending = b""
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.open_ones.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.open_ones.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        *lines, self.pending = (self.pending + data).split(b"\n")
        for line in lines:
            tenant_id, _, message = line.partition(b" ")
            self.on_line(tenant_id.decode(), message)
        if len(self.pending) > _MAX_LINE and self.transport is not None:
            self.transport.close()


class LocalDeltaListener:
    """An API process's socket, read on its event loop; `on_line(tenant_id, message)` for each chunk."""

    def __init__(self, folder: Path, on_line: Callable[[str, bytes], None]) -> None:
        self.folder = folder
        self.on_line = on_line
        self.path = folder / f"{os.getpid()}.sock"
        self._server: asyncio.Server | None = None
        # Workers keep their connections open: closing the server alone would leave them (and, from Python
        # 3.12, keep `wait_closed` waiting for them).
        self._connections: set[asyncio.BaseTransport] = set()

    async def start(self) -> None:
        """Listen; without a socket (a path too long for one, say) the process serves on, without live chunks."""
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            loop = asyncio.get_running_loop()
            self._server = await loop.create_unix_server(
                lambda: _Lines(self.on_line, self._connections), path=str(self.path)
            )
        except OSError:
            log.warning("delta_socket_unavailable", path=str(self.path), exc_info=True)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for transport in list(self._connections):
                transport.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
