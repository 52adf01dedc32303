"""Where the Files API keeps bytes: one small interface, and a directory implementation.

Rows in the `files` table describe files; the bytes live here under a key (`<tenant>/<file id>`). Every API and
worker process of a deployment must reach the same storage — with `DirectoryStorage`, the same directory (a
shared volume when they run on several machines). Writes are atomic (a temporary file renamed into place), so
a reader never sees half a file, and reads stream: nothing here holds a whole file in memory.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import AsyncIterable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

import anyio.to_thread

from switchyard.settings import Settings

# Keys are made by the service (`<tenant id>/<file id>`); anything else is refused rather than resolved, so a
# key can never name a path outside the root.
_KEY = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
# An async upload is written to disk in blocks of this size, each in a worker thread (one hop per block).
_ASYNC_BLOCK = 256 * 1024


class Storage(Protocol):
    """Bytes by key. A missing key raises `FileNotFoundError` (except in `delete`, which ignores it)."""

    def write(self, key: str, chunks: Iterable[bytes]) -> int:
        """Store `chunks` under `key`, atomically (all or nothing, replacing what was there); the bytes written.
        Blocking: for worker code and threads."""
        ...

    async def awrite(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        """`write` for the event loop: disk work runs in threads. An exception raised by `chunks` (a size limit,
        a bad line) leaves nothing stored and propagates."""
        ...

    def open(self, key: str) -> BinaryIO:
        """The stored bytes, for reading as a stream (the caller closes it)."""
        ...

    def iter_lines(self, key: str) -> Iterator[bytes]:
        """The stored bytes line by line (each with its `\\n`, the last one perhaps without), streamed."""
        ...

    def delete(self, key: str) -> None:
        """Remove the bytes; a key already gone is not an error."""
        ...

    def size(self, key: str) -> int:
        """The number of stored bytes."""
        ...


class DirectoryStorage:
    """`Storage` in a directory of the local filesystem (or a shared volume mounted on every machine)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        """Where `key`'s bytes are (the key is checked: it cannot leave the root)."""
        if not _KEY.match(key):
            raise ValueError(f"invalid storage key {key!r}")
        return self.root / key

    def write(self, key: str, chunks: Iterable[bytes]) -> int:
        """See `Storage.write`."""
        target, tmp, out = self._begin(key)
        try:
            written = 0
            for chunk in chunks:
                out.write(chunk)
                written += len(chunk)
            self._commit(out, tmp, target)
        except BaseException:
            self._abort(out, tmp)
            raise
        return written

    async def awrite(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        """See `Storage.awrite`."""
        target, tmp, out = await anyio.to_thread.run_sync(self._begin, key)
        try:
            written = 0
            block = bytearray()
            async for chunk in chunks:
                block += chunk
                written += len(chunk)
                if len(block) >= _ASYNC_BLOCK:
                    await anyio.to_thread.run_sync(out.write, bytes(block))
                    block.clear()
            if block:
                await anyio.to_thread.run_sync(out.write, bytes(block))
            await anyio.to_thread.run_sync(self._commit, out, tmp, target)
        except BaseException:
            # Shielded: a cancelled upload (the client went away) must still remove its temporary file.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._abort, out, tmp)
            raise
        return written

    def open(self, key: str) -> BinaryIO:
        """See `Storage.open`."""
        return self.path(key).open("rb")

    def iter_lines(self, key: str) -> Iterator[bytes]:
        """See `Storage.iter_lines`. A buffered reader: memory holds one line and one buffer, not the file."""
        with self.open(key) as f:
            yield from f

    def delete(self, key: str) -> None:
        """See `Storage.delete`."""
        self.path(key).unlink(missing_ok=True)

    def size(self, key: str) -> int:
        """See `Storage.size`."""
        return self.path(key).stat().st_size

    def _begin(self, key: str) -> tuple[Path, Path, BinaryIO]:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Beside the target, so that the rename stays on one filesystem and is atomic; a dot-name that no key
        # can take, so a crashed writer's leftover is never read as a file.
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        return target, tmp, tmp.open("xb")

    @staticmethod
    def _commit(out: BinaryIO, tmp: Path, target: Path) -> None:
        out.flush()
        # On disk before the rename and before the row naming it commits: a crash never leaves a row whose
        # bytes were lost.
        os.fsync(out.fileno())
        out.close()
        os.replace(tmp, target)
        # The rename itself made durable too (the directory's entry), for the same reason.
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    @staticmethod
    def _abort(out: BinaryIO, tmp: Path) -> None:
        out.close()
        tmp.unlink(missing_ok=True)


def storage_for(settings: Settings) -> Storage:
    """The files storage the settings name (today always a directory: `SWITCHYARD_FILES_DIR`)."""
    return DirectoryStorage(settings.files_path)
