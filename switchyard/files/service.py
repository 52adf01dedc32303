"""Files: uploads checked while they stream to storage, files written by workers (batch outputs), reads, lists
and deletion. No HTTP here, no commit: callers own the transaction.

A file is a row (`File`) plus its bytes in the files storage (`storage.py`). Bytes are written before the row
that names them is flushed, and removed only after the deletion has committed, so a committed row always has
its bytes. (A crash between a write and its commit leaves unreferenced bytes behind; they are never read.)
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

import orjson

from switchyard.core.db import Tx
from switchyard.core.errors import AppError, MalformedRequest, NotFound, PayloadTooLarge
from switchyard.core.ids import new_id
from switchyard.core.models import File, utcnow
from switchyard.core.validation import has_unstorable
from switchyard.files import repository
from switchyard.files.storage import Storage, storage_for
from switchyard.settings import get_settings

# Purposes a file may have, and those a client may upload (`batch_output` files are written by batches).
PURPOSES = ("batch", "batch_output")
UPLOAD_PURPOSES = ("batch",)
# A batch input file holds at most this many requests (non-empty lines).
MAX_BATCH_LINES = 50_000
MAX_FILENAME_CHARS = 255
PROCESSED = "processed"


def storage_key(tenant_id: str, file_id: str) -> str:
    """Where a file's bytes are stored."""
    return f"{tenant_id}/{file_id}"


def file_object(file: File) -> dict[str, Any]:
    """The file as OpenAI's `file` object."""
    return {
        "id": file.id,
        "object": "file",
        "bytes": file.bytes,
        "created_at": int(file.created_at.timestamp()),
        "filename": file.filename,
        "purpose": file.purpose,
        "status": file.status,
        "status_details": None,
        "expires_at": None,
    }


# --- for the workers (and the routes): sync, in the caller's transaction ---------------------------------------


def get_file(tx: Tx, tenant_id: str, file_id: str) -> File:
    """A live file of the tenant; `NotFound` for an unknown, deleted or another tenant's id."""
    file = repository.get_live(tx.session, tenant_id, file_id)
    if file is None:
        raise NotFound(f"no file '{file_id}'", param="file_id")
    return file


def iter_lines(file: File, storage: Storage | None = None) -> Iterator[bytes]:
    """The file's bytes line by line, streamed (each line keeps its `\\n`). `storage`: the configured one unless
    given."""
    return (storage or storage_for(get_settings())).iter_lines(file.storage_key)


def open_content(file: File, storage: Storage) -> BinaryIO:
    """The file's bytes, to stream (the caller closes it). Opened at once, so a deletion that commits while they
    are read does not cut the reader short."""
    return storage.open(file.storage_key)


def create_file(tx: Tx, storage: Storage, tenant_id: str, purpose: str, filename: str, chunks: Iterable[bytes]) -> File:
    """Store `chunks` as a new file of the tenant (a batch's output or error file) and add its row (flushed, not
    committed). Blocking: worker code."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown file purpose {purpose!r}")
    file_id = new_id("file")
    key = storage_key(tenant_id, file_id)
    size = storage.write(key, chunks)
    try:
        return _add(tx, file_id, tenant_id, purpose, filename, key, size)
    except BaseException:
        storage.delete(key)
        raise


def list_files(
    tx: Tx,
    tenant_id: str,
    *,
    purpose: str | None = None,
    after: str | None = None,
    limit: int = 10_000,
    order: Literal["asc", "desc"] = "desc",
) -> dict[str, Any]:
    """A page of the tenant's files in OpenAI's list shape (`has_more`; `last_id` is the next page's `after`)."""
    rows = repository.page(tx.session, tenant_id, purpose=purpose, after=after, limit=limit, order=order)
    data = [file_object(f) for f in rows[:limit]]
    return {
        "object": "list",
        "data": data,
        "has_more": len(rows) > limit,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


def delete_file(tx: Tx, storage: Storage, tenant_id: str, file_id: str) -> dict[str, Any]:
    """Delete a file: its row is kept (marked deleted, unknown from now on), its bytes are removed once that
    has committed."""
    file = get_file(tx, tenant_id, file_id)
    file.deleted_at = utcnow()
    tx.session.flush()
    key = file.storage_key
    tx.after_commit(lambda: storage.delete(key))
    return {"id": file.id, "object": "file", "deleted": True}


# --- uploads: checked while they stream --------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredUpload:
    """An upload's bytes, stored and checked; the row is added by `record_upload`."""

    file_id: str
    key: str
    bytes: int


class UploadCheck:
    """The checks of one upload, made on each chunk as it arrives: the size limit and the purpose, and for
    purpose `batch` that the file is JSONL (every non-empty line a JSON object, at most `MAX_BATCH_LINES`).
    The full check of each request belongs to batch creation; this one is light.

    The form's fields may come in any order: while the purpose is not known yet, a problem with the lines is
    kept and reported at the end if the purpose turns out to be `batch`."""

    def __init__(self, *, max_bytes: int, max_line_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.purpose: str | None = None
        self.bytes = 0
        self._lines = _JsonlCheck(max_line_bytes=max_line_bytes, max_lines=MAX_BATCH_LINES)

    def field(self, name: str, value: str) -> None:
        """A form field other than the file."""
        if name != "purpose":
            return  # OpenAI's optional fields (expires_after) have no effect here
        if value not in UPLOAD_PURPOSES:
            written = " (batch_output files are written by batches)" if value == "batch_output" else ""
            raise MalformedRequest(f"purpose must be 'batch', not '{_shown(value)}'{written}", param="purpose")
        self.purpose = value
        self._raise_line_problem()

    def data(self, chunk: bytes) -> None:
        """The next bytes of the file."""
        self.bytes += len(chunk)
        if self.bytes > self.max_bytes:
            raise PayloadTooLarge(
                f"the file is larger than the limit of {self.max_bytes} bytes (SWITCHYARD_MAX_FILE_BYTES)",
                param="file",
            )
        if self.purpose in (None, "batch"):
            self._lines.feed(chunk)
            self._raise_line_problem()

    def end(self) -> None:
        """The whole form has been read."""
        if self.purpose is None:
            raise MalformedRequest("purpose is required ('batch')", param="purpose")
        self._lines.end()
        self._raise_line_problem()

    def _raise_line_problem(self) -> None:
        if self.purpose == "batch" and self._lines.problem is not None:
            raise self._lines.problem


async def store_upload(
    storage: Storage, tenant_id: str, chunks: AsyncIterable[bytes], check: UploadCheck
) -> StoredUpload:
    """Stream an upload's bytes to storage through `check`; a failed check leaves nothing stored."""
    file_id = new_id("file")
    key = storage_key(tenant_id, file_id)

    async def checked() -> AsyncIterator[bytes]:
        async for chunk in chunks:
            check.data(chunk)
            yield chunk
        check.end()

    size = await storage.awrite(key, checked())
    return StoredUpload(file_id=file_id, key=key, bytes=size)


def record_upload(tx: Tx, tenant_id: str, stored: StoredUpload, purpose: str, filename: str) -> dict[str, Any]:
    """Add the row of a stored upload (flushed, not committed); its file object."""
    file = _add(tx, stored.file_id, tenant_id, purpose, filename, stored.key, stored.bytes)
    return file_object(file)


def check_filename(filename: str) -> str:
    """The upload's file name as stored: its last path segment, refused when it cannot be stored."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    if has_unstorable(name):
        raise MalformedRequest("the file name must not contain U+0000 or lone surrogates", param="file")
    if len(name) > MAX_FILENAME_CHARS:
        raise MalformedRequest(f"the file name is longer than {MAX_FILENAME_CHARS} characters", param="file")
    return name


def _add(tx: Tx, file_id: str, tenant_id: str, purpose: str, filename: str, key: str, size: int) -> File:
    file = File(
        id=file_id,
        tenant_id=tenant_id,
        purpose=purpose,
        filename=filename,
        bytes=size,
        status=PROCESSED,
        storage_key=key,
        created_at=utcnow(),
    )
    tx.session.add(file)
    tx.session.flush()
    return file


def _shown(value: str) -> str:
    return value if len(value) <= 40 else value[:40] + "…"


class _JsonlCheck:
    """Splits a stream into lines and checks each non-empty one is a JSON object. Memory holds at most one line
    (a line longer than `max_line_bytes` is a problem, not a buffer that grows)."""

    def __init__(self, *, max_line_bytes: int, max_lines: int) -> None:
        self.max_line_bytes = max_line_bytes
        self.max_lines = max_lines
        self.problem: AppError | None = None
        self._pending = bytearray()
        self._line_no = 0
        self._requests = 0

    def feed(self, chunk: bytes) -> None:
        start = 0
        while self.problem is None:
            newline = chunk.find(b"\n", start)
            if newline == -1:
                break
            if self._pending:
                self._pending += chunk[start:newline]
                line = bytes(self._pending)
                self._pending.clear()
            else:
                line = chunk[start:newline]
            self._line(line)
            start = newline + 1
        if self.problem is None:
            rest = len(chunk) - start
            if len(self._pending) + rest > self.max_line_bytes:
                self._fail(self._line_no + 1, f"is longer than {self.max_line_bytes} bytes")
            else:
                self._pending += chunk[start:]

    def end(self) -> None:
        if self.problem is None and self._pending:
            self._line(bytes(self._pending))
            self._pending.clear()

    def _line(self, line: bytes) -> None:
        self._line_no += 1
        if not line.strip():
            return
        self._requests += 1
        if self._requests > self.max_lines:
            self._fail(self._line_no, f"is past the limit of {self.max_lines} requests in a batch file")
        elif len(line) > self.max_line_bytes:
            self._fail(self._line_no, f"is longer than {self.max_line_bytes} bytes")
        else:
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                self._fail(self._line_no, f"is not valid JSON ({exc.msg} at column {exc.colno})")
                return
            if not isinstance(value, dict):
                self._fail(self._line_no, "is not a JSON object")

    def _fail(self, line_no: int, what: str) -> None:
        self.problem = MalformedRequest(f"the file is not valid JSONL: line {line_no} {what}", param="file")
