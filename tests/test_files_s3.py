"""Files in S3-compatible object storage, against a real S3-speaking server (moto's, in a process of its own,
reached over HTTP by boto3): the storage class itself (small and multipart writes, streamed reads, a failed
write leaving no object and no multipart upload behind, missing keys, an unreachable endpoint), and a whole
stack configured for S3 — uploads and downloads through the official `openai` SDK, a batch whose input is read
from the bucket and whose output and error files are written to it, and the API answering 503 (not 500) while
the storage is unreachable."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import boto3
import httpx
import openai
import pytest

from switchyard.core.errors import ConfigError
from switchyard.files.s3 import MIN_PART_BYTES, S3Storage, StorageUnavailable
from switchyard.files.storage import DirectoryStorage, storage_for
from switchyard.settings import Settings
from tests.support import Process, Stack, cli, free_port, wait_http, wait_until

BUCKET = "switchyard-files"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3 server in a process of its own, with the bucket made; boto3 in this process gets test
    credentials from the environment, as a deployment's would."""
    port = free_port()
    env = {**os.environ, **CREDENTIALS}
    server = Process(
        "moto",
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env,
        tmp_path_factory.mktemp("moto"),
    )
    url = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for name, value in CREDENTIALS.items():
            mp.setenv(name, value)
        try:
            wait_http(f"{url}/moto-api/", server)
            admin(url).create_bucket(Bucket=BUCKET)
            yield url
        finally:
            server.stop()


def admin(url: str) -> Any:
    """A plain boto3 client, to look at the bucket behind the storage's back."""
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1")


def keys(url: str, prefix: str = "") -> list[str]:
    listed = admin(url).list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for o in listed.get("Contents", [])]


def pending_uploads(url: str) -> list[str]:
    """Multipart uploads started and neither completed nor aborted (their parts would stay, and be billed)."""
    return [u["Key"] for u in admin(url).list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])]


def storage(url: str, prefix: str = "") -> S3Storage:
    # The smallest part S3 allows, so a test reaches several parts with a few MiB.
    return S3Storage(BUCKET, prefix=prefix, endpoint_url=url, region="us-east-1", part_bytes=MIN_PART_BYTES)


def lines_of(n: int, width: int = 100) -> Iterator[bytes]:
    for i in range(n):
        yield f"{i:08d} {'x' * (width - 10)}\n".encode()


# --- the storage class --------------------------------------------------------------------------------------


def test_small_file_round_trip_and_missing_keys(s3_url: str) -> None:
    s = storage(s3_url, prefix=f"p-{secrets.token_hex(3)}/")
    assert s.write("t/small", [b"one\n", b"two", b"\nthree"]) == 13
    assert keys(s3_url, s.prefix) == [f"{s.prefix}t/small"]  # under the prefix
    assert s.size("t/small") == 13
    with s.open("t/small") as body:
        assert body.read(4) == b"one\n"
        assert body.read() == b"two\nthree"
    assert list(s.iter_lines("t/small")) == [b"one\n", b"two\n", b"three"]
    assert s.write("t/small", [b"replaced\n"]) == 9  # a write replaces what was there
    assert list(s.iter_lines("t/small")) == [b"replaced\n"]
    assert s.write("t/empty", []) == 0
    assert s.size("t/empty") == 0
    assert list(s.iter_lines("t/empty")) == []

    s.delete("t/small")
    s.delete("t/small")  # already gone: not an error
    for read in (s.open, s.size, lambda key: list(s.iter_lines(key))):
        with pytest.raises(FileNotFoundError):
            read("t/small")
    with pytest.raises(ValueError, match="invalid storage key"):
        s.write("../escape", [b"x"])
    s.check()


def test_large_write_is_multipart_and_reads_stream(s3_url: str) -> None:
    s = storage(s3_url)
    key = f"t/big-{secrets.token_hex(3)}"
    # 12 MiB in 64 KiB chunks, lines running across them: two full 5 MiB parts and a last one.
    chunk = b"".join(lines_of(656, 100))[: 64 * 1024]
    data = chunk * 192
    assert s.write(key, iter([chunk] * 192)) == len(data) == 12 * 1024 * 1024
    head = admin(s3_url).head_object(Bucket=BUCKET, Key=key)
    assert head["ETag"].strip('"').endswith("-3")  # a multipart object's ETag counts its parts
    assert s.size(key) == len(data)
    read = bytearray()
    with s.open(key) as body:
        while block := body.read(1 << 20):
            read += block
    assert hashlib.sha256(read).digest() == hashlib.sha256(data).digest()
    lines = list(s.iter_lines(key))
    assert b"".join(lines) == data
    assert all(line.endswith(b"\n") and b"\n" not in line[:-1] for line in lines[:-1])  # whole lines, one each
    assert len(lines) == data.count(b"\n") + 1  # the last one ends without a newline
    assert pending_uploads(s3_url) == []
    s.delete(key)


class Broken(Exception):
    pass


def test_a_failed_write_stores_nothing_and_aborts_its_upload(s3_url: str) -> None:
    s = storage(s3_url)

    def failing(after: int) -> Iterator[bytes]:
        for _ in range(after):
            yield b"y" * 65536
        raise Broken

    s.write("t/kept", [b"old\n"])
    for after in (3, 100):  # before the first part was sent (a single PUT), and after parts were
        with pytest.raises(Broken):
            s.write("t/kept", failing(after))
        with pytest.raises(Broken):
            s.write("t/never", failing(after))
        assert list(s.iter_lines("t/kept")) == [b"old\n"]  # the old bytes stay, whole
        with pytest.raises(FileNotFoundError):
            s.size("t/never")
        assert pending_uploads(s3_url) == []


def test_awrite_streams_from_the_event_loop(s3_url: str) -> None:
    s = storage(s3_url)

    async def chunks(n: int, fail: bool = False) -> AsyncIterator[bytes]:
        for line in lines_of(n, 1000):
            yield line
        if fail:
            raise Broken

    async def main() -> None:
        assert await s.awrite("t/async", chunks(11_000)) == 11_000_000
        with pytest.raises(Broken):
            await s.awrite("t/async-broken", chunks(11_000, fail=True))
        # A cancelled upload (the client went away) aborts too.
        with anyio.move_on_after(0.5):
            await s.awrite("t/async-cancelled", _endless())

    anyio.run(main)
    assert admin(s3_url).head_object(Bucket=BUCKET, Key="t/async")["ETag"].strip('"').endswith("-3")
    assert list(s.iter_lines("t/async")) == list(lines_of(11_000, 1000))
    assert keys(s3_url, "t/async-") == []
    assert pending_uploads(s3_url) == []


async def _endless() -> AsyncIterator[bytes]:
    while True:
        yield b"z" * 65536
        await anyio.lowlevel.checkpoint()


def test_unreachable_storage_or_missing_bucket_is_unavailable(s3_url: str) -> None:
    down = S3Storage(BUCKET, endpoint_url=f"http://127.0.0.1:{free_port()}", region="us-east-1")
    no_bucket = S3Storage("no-such-bucket", endpoint_url=s3_url, region="us-east-1")
    for s in (down, no_bucket):
        with pytest.raises(StorageUnavailable) as caught:
            s.check()
        assert caught.value.status == 503
        assert caught.value.headers["Retry-After"]
        with pytest.raises(StorageUnavailable):
            s.write("t/x", [b"x"])
        with pytest.raises(StorageUnavailable):
            s.open("t/x")
    with pytest.raises(StorageUnavailable):
        down.size("t/x")
    # Not an OSError: a batch's validation must not take an outage for an unreadable input file.
    assert not issubclass(StorageUnavailable, OSError)


def test_settings_pick_the_storage(s3_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(storage_for(Settings(data_dir=tmp_path)), DirectoryStorage)
    assert isinstance(storage_for(Settings(data_dir=tmp_path, files_s3_bucket="")), DirectoryStorage)
    with pytest.raises(ValueError, match="files_s3_bucket"):
        Settings(files_s3_bucket="no spaces/or slashes")
    settings = Settings(
        data_dir=tmp_path, files_s3_bucket=BUCKET, files_s3_prefix="/switchyard/files", files_s3_endpoint_url=s3_url
    )
    chosen = storage_for(settings)
    assert isinstance(chosen, S3Storage)
    assert chosen.prefix == "switchyard/files/"
    assert Settings(files_s3_bucket=BUCKET).files_s3_prefix == ""
    with pytest.raises(ValueError, match="FILES_S3_ENDPOINT_URL"):
        Settings(files_s3_bucket=BUCKET, files_s3_endpoint_url="minio:9000")
    # Without the s3 extra, the process stops saying what to install.
    monkeypatch.delitem(sys.modules, "switchyard.files.s3")
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(ConfigError, match=r"switchyard\[s3\]"):
        storage_for(settings)


# --- a stack on S3 --------------------------------------------------------------------------------------------

PREFIX = "deploy-a/"


@pytest.fixture(scope="module")
def s3_stack(s3_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        "SWITCHYARD_FILES_S3_BUCKET": BUCKET,
        "SWITCHYARD_FILES_S3_PREFIX": PREFIX,
        "SWITCHYARD_FILES_S3_ENDPOINT_URL": s3_url,
        "SWITCHYARD_FILES_S3_REGION": "us-east-1",
        **CREDENTIALS,
    }
    s = Stack(tmp_path_factory.mktemp("s3-stack"), redis_db=15, ml=False, env=env)
    yield s
    s.close()


@pytest.fixture(scope="module")
def sdk(s3_stack: Stack) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(
        base_url=f"{s3_stack.url}/v1", api_key=s3_stack.new_key("s3-tenant", "admin"), max_retries=0, timeout=60
    )
    yield client
    client.close()


def chat_line(custom_id: str, text: str) -> bytes:
    body = {"model": "chat-default", "messages": [{"role": "user", "content": text}], "max_tokens": 20}
    line = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    return json.dumps(line).encode() + b"\n"


def tenant_of(stack: Stack, file_id: str) -> str:
    return str(stack.sql("SELECT tenant_id FROM files WHERE id = %s", file_id)[0][0])


def test_files_live_in_the_bucket(s3_stack: Stack, sdk: openai.OpenAI, s3_url: str) -> None:
    data = chat_line("a", "hello") + chat_line("b", "there")
    created = sdk.files.create(file=("in.jsonl", data), purpose="batch")
    key = f"{PREFIX}{tenant_of(s3_stack, created.id)}/{created.id}"
    assert key in keys(s3_url, PREFIX)
    assert sdk.files.retrieve(created.id).bytes == len(data)
    assert sdk.files.content(created.id).content == data
    # Nothing went to the files directory.
    assert not list((Path(s3_stack.env["SWITCHYARD_DATA_DIR"]) / "files").rglob("*"))
    sdk.files.delete(created.id)
    wait_until(lambda: key not in keys(s3_url, PREFIX), timeout=10, what="the object deleted")
    with pytest.raises(openai.NotFoundError):
        sdk.files.content(created.id)
    with httpx.Client(base_url=s3_stack.url) as http:
        assert http.get("/readyz").json()["checks"]["files"] == "ok"


def test_large_upload_is_multipart_and_a_bad_line_late_in_it_stores_nothing(
    s3_stack: Stack, sdk: openai.OpenAI, s3_url: str
) -> None:
    line = chat_line("c-00000", "y" * 200)
    count = (12 * 1024 * 1024) // len(line) + 1  # past one 8 MiB part
    data = b"".join(chat_line(f"c-{i:05d}", "y" * 200) for i in range(count))
    created = sdk.files.create(file=("big.jsonl", data), purpose="batch")
    key = f"{PREFIX}{tenant_of(s3_stack, created.id)}/{created.id}"
    assert admin(s3_url).head_object(Bucket=BUCKET, Key=key)["ETag"].strip('"').endswith("-2")
    assert sdk.files.content(created.id).content == data

    # The upload is checked as it streams: a bad line after the first part was sent fails it, and the multipart
    # upload is aborted.
    before = keys(s3_url, PREFIX)
    with pytest.raises(openai.BadRequestError, match=f"line {count + 1} is not valid JSON"):
        sdk.files.create(file=("bad.jsonl", data + b"{not json\n"), purpose="batch")
    assert keys(s3_url, PREFIX) == before
    assert pending_uploads(s3_url) == []


def test_batch_reads_its_input_and_writes_its_output_in_the_bucket(
    s3_stack: Stack, sdk: openai.OpenAI, s3_url: str
) -> None:
    nonce = secrets.token_hex(3)
    data = b"".join(chat_line(f"req-{i}", f"s3 {nonce} {i}") for i in range(3)) + chat_line("bad", "[[fail:400]]")
    file = sdk.files.create(file=("input.jsonl", data), purpose="batch")
    batch = sdk.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")

    def done() -> Any:
        b = sdk.batches.retrieve(batch.id)
        return b if b.status in ("completed", "failed", "expired", "cancelled") else None

    ended = wait_until(done, timeout=60, interval=0.2, what=f"batch {batch.id} ended")
    assert ended.status == "completed", ended
    assert ended.output_file_id
    assert ended.error_file_id
    output = [json.loads(x) for x in sdk.files.content(ended.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in output] == ["req-0", "req-1", "req-2"]
    assert output[1]["response"]["body"]["choices"][0]["message"]["content"] == f"echo: s3 {nonce} 1"
    errors = [json.loads(x) for x in sdk.files.content(ended.error_file_id).text.splitlines()]
    assert [e["custom_id"] for e in errors] == ["bad"]
    tenant = tenant_of(s3_stack, file.id)
    stored = keys(s3_url, f"{PREFIX}{tenant}/")
    assert {f"{PREFIX}{tenant}/{ended.output_file_id}", f"{PREFIX}{tenant}/{ended.error_file_id}"} <= set(stored)


def test_storage_down_is_a_503_and_the_api_still_starts(s3_stack: Stack, sdk: openai.OpenAI) -> None:
    existing = sdk.files.create(file=("kept.jsonl", chat_line("k", "kept")), purpose="batch")
    # A second API process of the same deployment whose endpoint answers nothing (S3 down as it starts).
    port = free_port()
    api = s3_stack.start(
        "api-s3-down",
        cli("api", "--port", str(port)),
        env={"SWITCHYARD_FILES_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz", api)
        assert "files_storage_unavailable_at_start" in api.log()
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {sdk.api_key}"}, timeout=60) as http:
            ready = http.get("/readyz")
            assert ready.status_code == 200, ready.text  # reported, not a reason to leave the load balancer
            assert ready.json()["checks"]["files"] == "unavailable: StorageUnavailable"
            upload = http.post("/v1/files", files={"file": ("x.jsonl", chat_line("x", "x"))}, data={"purpose": "batch"})
            content = http.get(f"/v1/files/{existing.id}/content")
            for answer in (upload, content):
                assert answer.status_code == 503, answer.text
                assert answer.headers["retry-after"]
                assert answer.json()["error"]["type"] == "service_unavailable"
                assert "files storage is unavailable" in answer.json()["error"]["message"]
            # What needs only the database still works.
            assert http.get(f"/v1/files/{existing.id}").status_code == 200
    finally:
        api.stop()
    assert sdk.files.content(existing.id).content == chat_line("k", "kept")
