"""Where the Files API keeps bytes: one small interface, a directory implementation, and the choice between it
and S3-compatible object storage (`s3.py`) that the settings make.

Rows in the `files` table describe files; the bytes live here under a key (`<tenant>/<file id>`). Every API and
worker process of a deployment must reach the same storage — with `DirectoryStorage`, the same directory (a
shared volume when they run on several machines); with `S3Storage`, the same bucket and prefix. Writes are
atomic (a temporary file renamed into place; an S3 object appears when its upload completes), so a reader never
sees half a file, and reads stream: nothing here holds a whole file in memory.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import AsyncIterable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

import anyio.to_thread

from switchyard.core.errors import ConfigError
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

    def check(self) -> None:
        """Raise unless the storage can be used now (cheap: /readyz calls it)."""
        ...


def check_key(key: str) -> str:
    """`key`, when it is one the service makes (`<tenant>/<file id>`); else `ValueError`."""
    if not _KEY.match(key):
        raise ValueError(f"invalid storage key {key!r}")
    return key


class DirectoryStorage:
    """`Storage` in a directory of the local filesystem (or a shared volume mounted on every machine)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        """Where `key`'s bytes are (the key is checked: it cannot leave the root)."""
        return self.root / check_key(key)

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

    def check(self) -> None:
        """See `Storage.check`: the directory exists (made if need be) and this process may write to it."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise PermissionError(f"{self.root} is not writable")

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
    """The files storage the settings name: a bucket when `SWITCHYARD_FILES_S3_BUCKET` is set, else a directory
    (`SWITCHYARD_FILES_DIR`). Made once per process, in its start-up hooks (an S3 client is not free)."""
    if not settings.files_s3_bucket:
        return DirectoryStorage(settings.files_path)
    try:
        from switchyard.files.s3 import S3Storage
    except ImportError as exc:
        if exc.name not in ("boto3", "botocore"):
            raise
        # boto3 is an extra: deployments on a directory do not need it.
        raise ConfigError(
            "SWITCHYARD_FILES_S3_BUCKET is set, but boto3 is not installed: install Switchyard's s3 extra "
            "(pip install 'switchyard[s3]')"
        ) from exc
    return S3Storage(
        settings.files_s3_bucket,
        prefix=settings.files_s3_prefix,
        endpoint_url=settings.files_s3_endpoint_url,
        region=settings.files_s3_region,
    )
