"""`Storage` in S3-compatible object storage (AWS S3, MinIO, Cloudflare R2, ...), through boto3.

Keys live under a prefix in one bucket. Writes stream: the bytes are sent in parts of `part_bytes` as they come
(a multipart upload), so memory holds one part, never the file; a file smaller than one part is a single PUT.
Either way the object appears whole when the upload completes, never half written, and an exception while
writing aborts the multipart upload, so nothing is stored. Reads stream the response body.

Credentials come from boto3's standard chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an
instance or pod role, ...); Switchyard never stores them. The storage being down is `StorageUnavailable`, a 503
for a client of the Files API and an advance retried by the batches' sweep in a worker.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, BinaryIO, TypeVar, cast

import anyio
import anyio.to_thread
import boto3
import structlog
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from switchyard.core.errors import ServiceUnavailable
from switchyard.files.storage import check_key

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

log = structlog.get_logger(__name__)

T = TypeVar("T")

# S3 refuses parts under 5 MiB (except the last). 8 MiB, boto3's own default: one part in memory per upload,
# and 10,000 parts (the most an upload may have) make 80 GB, far past any file limit.
PART_BYTES = 8 * 1024 * 1024
MIN_PART_BYTES = 5 * 1024 * 1024
# iter_lines reads the body in blocks of this size.
_READ_BLOCK = 256 * 1024
# Error codes that mean the key (not the bucket) does not exist; a HEAD answers a bare "404".
_MISSING = {"NoSuchKey", "404", "NotFound"}


class StorageUnavailable(ServiceUnavailable):
    """The files storage cannot be reached or refused the request (down, no bucket, bad credentials).

    The client is told only that the storage is unavailable; the cause is logged for the operator."""

    def __init__(self, cause: Exception) -> None:
        super().__init__("the files storage is unavailable; try again later")
        self.cause = cause


class S3Storage:
    """`Storage` in a bucket of S3-compatible object storage, every key under `prefix`."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        part_bytes: int = PART_BYTES,
    ) -> None:
        if part_bytes < MIN_PART_BYTES:
            raise ValueError(f"S3 parts are at least {MIN_PART_BYTES} bytes")
        self.bucket = bucket
        self.prefix = prefix
        self.part_bytes = part_bytes
        # A session of its own: boto3's default session is shared module state and not thread-safe, while a
        # client is (the API's threads and a worker's share this one).
        session = boto3.session.Session(region_name=region)
        # Retries in boto3's standard mode (throttling and 5xx, with backoff); short connect timeouts, so an
        # unreachable endpoint becomes a 503 in seconds rather than a hung request. The pool matches the API's
        # thread pool: downloads each hold a connection while they stream.
        config = Config(
            connect_timeout=3,
            read_timeout=60,
            retries={"mode": "standard", "max_attempts": 3},
            max_pool_connections=64,
        )
        self.client: S3Client = session.client("s3", endpoint_url=endpoint_url, config=config)
        # /readyz answers quickly: one attempt, short timeouts.
        probe_config = Config(connect_timeout=2, read_timeout=2, retries={"mode": "standard", "max_attempts": 1})
        self._probe: S3Client = session.client("s3", endpoint_url=endpoint_url, config=probe_config)

    def object_key(self, key: str) -> str:
        """The S3 key of a storage key (checked as `DirectoryStorage` checks it, then prefixed)."""
        return self.prefix + check_key(key)

    def write(self, key: str, chunks: Iterable[bytes]) -> int:
        """See `Storage.write`."""
        upload = _Upload(self, self.object_key(key))
        try:
            for chunk in chunks:
                if upload.add(chunk):
                    upload.send_part()
            upload.complete()
        except BaseException:
            upload.abort()
            raise
        return upload.written

    async def awrite(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        """See `Storage.awrite`. Each S3 call runs in a worker thread; the chunks are gathered on the loop."""
        upload = _Upload(self, self.object_key(key))
        try:
            async for chunk in chunks:
                if upload.add(chunk):
                    await anyio.to_thread.run_sync(upload.send_part)
            await anyio.to_thread.run_sync(upload.complete)
        except BaseException:
            # Shielded: a cancelled upload (the client went away) must still abort, or S3 keeps its parts.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(upload.abort)
            raise
        return upload.written

    def open(self, key: str) -> BinaryIO:
        """See `Storage.open`: the response body, streamed (botocore's `StreamingBody`, a file-like object)."""
        name = self.object_key(key)
        response = self._call(lambda: self.client.get_object(Bucket=self.bucket, Key=name), key)
        # StreamingBody is an io.IOBase with read(n) and close(): all a BinaryIO's reader uses here.
        return cast(BinaryIO, response["Body"])

    def iter_lines(self, key: str) -> Iterator[bytes]:
        """See `Storage.iter_lines`. Memory holds one block and the line being read, not the object."""
        body = self.open(key)
        with body:
            pending = b""
            while True:
                block = self._call(lambda: body.read(_READ_BLOCK), key)
                if not block:
                    break
                lines = (pending + block).splitlines(keepends=True)
                # The last piece has no newline yet (unless the block ended on one): it waits for the next block.
                pending = lines.pop() if not lines[-1].endswith(b"\n") else b""
                yield from lines
            if pending:
                yield pending

    def delete(self, key: str) -> None:
        """See `Storage.delete` (S3 answers a delete of a missing key with success)."""
        name = self.object_key(key)
        self._call(lambda: self.client.delete_object(Bucket=self.bucket, Key=name), key)

    def size(self, key: str) -> int:
        """See `Storage.size`: a HEAD of the object."""
        name = self.object_key(key)
        return self._call(lambda: self.client.head_object(Bucket=self.bucket, Key=name), key)["ContentLength"]

    def check(self) -> None:
        """Raise `StorageUnavailable` unless the bucket answers (a HEAD of the bucket: the credentials need
        `s3:ListBucket` on it). One attempt, short timeouts: for /readyz and the API's start."""
        self._call(lambda: self._probe.head_bucket(Bucket=self.bucket), None)

    def _call(self, fn: Callable[[], T], key: str | None) -> T:
        """Run one S3 call: a missing key becomes `FileNotFoundError`, any other failure `StorageUnavailable`."""
        try:
            return fn()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if key is not None and code in _MISSING:
                raise FileNotFoundError(f"no stored file {key!r}") from exc
            raise self._unavailable(exc) from exc
        except BotoCoreError as exc:  # unreachable, timed out, no credentials, a broken response stream
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: Exception) -> StorageUnavailable:
        log.warning("files_storage_unavailable", bucket=self.bucket, error=f"{type(exc).__name__}: {exc}")
        return StorageUnavailable(exc)


class _Upload:
    """One object being written: bytes gathered into a part, each full part sent as the next of a multipart
    upload (started with the first). A stream that ends within the first part is one PUT instead."""

    def __init__(self, storage: S3Storage, name: str) -> None:
        self.storage = storage
        self.name = name
        self.written = 0
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[CompletedPartTypeDef] = []

    def add(self, chunk: bytes) -> bool:
        """Take the next bytes; True when a part is full and should be sent (`send_part`)."""
        self._buffer += chunk
        self.written += len(chunk)
        return len(self._buffer) >= self.storage.part_bytes

    def send_part(self) -> None:
        """Send the gathered bytes as the next part (starting the multipart upload first if need be)."""
        s3, bucket = self.storage.client, self.storage.bucket
        if self._upload_id is None:
            started = self._call(lambda: s3.create_multipart_upload(Bucket=bucket, Key=self.name))
            self._upload_id = started["UploadId"]
        upload_id, number, body = self._upload_id, len(self._parts) + 1, bytes(self._buffer)
        self._buffer.clear()
        sent = self._call(
            lambda: s3.upload_part(Bucket=bucket, Key=self.name, UploadId=upload_id, PartNumber=number, Body=body)
        )
        self._parts.append({"ETag": sent["ETag"], "PartNumber": number})

    def complete(self) -> None:
        """Store the object: the last part and the completion, or one PUT for a small file."""
        s3, bucket = self.storage.client, self.storage.bucket
        if self._upload_id is None:
            body = bytes(self._buffer)
            self._buffer.clear()
            self._call(lambda: s3.put_object(Bucket=bucket, Key=self.name, Body=body))
            return
        if self._buffer:
            self.send_part()
        upload_id, parts = self._upload_id, self._parts
        self._call(
            lambda: s3.complete_multipart_upload(
                Bucket=bucket, Key=self.name, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        )
        self._upload_id = None

    def abort(self) -> None:
        """Drop what was sent: the multipart upload's parts are deleted and no object appears. A failure to
        abort is logged, not raised (the write's own error is the one to report); a bucket lifecycle rule that
        aborts incomplete multipart uploads cleans up after it."""
        self._buffer.clear()
        upload_id = self._upload_id
        if upload_id is None:
            return
        self._upload_id = None
        try:
            self.storage.client.abort_multipart_upload(Bucket=self.storage.bucket, Key=self.name, UploadId=upload_id)
        except (ClientError, BotoCoreError) as exc:
            log.warning("files_storage_abort_failed", key=self.name, upload_id=upload_id, error=str(exc))

    def _call(self, fn: Callable[[], T]) -> T:
        return self.storage._call(fn, None)
