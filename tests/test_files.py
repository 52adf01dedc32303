"""The Files API as a client meets it: the official `openai` SDK against the real API process, the bytes in the
deployment's files directory, the worker-side service on the same database and directory."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from switchyard.core.db import Database
from switchyard.core.errors import NotFound
from switchyard.files import service
from switchyard.files.storage import DirectoryStorage, storage_for
from switchyard.settings import Settings
from tests.support import Stack, cli, free_port, wait_http

SMALL_LIMIT = 64 * 1024


def jsonl(n: int, pad: int = 0) -> bytes:
    """`n` batch request lines (each padded with `pad` characters)."""
    return b"".join(
        orjson.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "chat-default", "messages": [{"role": "user", "content": f"hi {i} {'x' * pad}"}]},
            }
        )
        + b"\n"
        for i in range(n)
    )


def sdk(stack: Stack, key: str, url: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url or stack.url}/v1", api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tenant() -> str:
    return f"files-{secrets.token_hex(3)}"


@pytest.fixture(scope="module")
def member(stack: Stack, tenant: str) -> openai.OpenAI:
    return sdk(stack, stack.new_key(tenant, "member"))


@pytest.fixture(scope="module")
def viewer(stack: Stack, tenant: str) -> openai.OpenAI:
    return sdk(stack, stack.new_key(tenant, "viewer"))


@pytest.fixture(scope="module")
def files_dir(stack: Stack) -> Path:
    return Settings(data_dir=Path(stack.env["SWITCHYARD_DATA_DIR"])).files_path


@pytest.fixture(scope="module")
def worker_db(stack: Stack) -> Iterator[tuple[Database, Settings]]:
    """The database and settings a worker of the stack has (same database, same files directory)."""
    settings = Settings(database_url=stack.database_url, data_dir=Path(stack.env["SWITCHYARD_DATA_DIR"]))
    db = Database(settings, pool_size=1)
    yield db, settings
    db.dispose()


def leftovers(files_dir: Path) -> list[Path]:
    """Temporary files of writes that did not complete."""
    return [p for p in files_dir.rglob(".*") if p.is_file()]


def test_upload_retrieve_list_download_delete(member: openai.OpenAI, files_dir: Path) -> None:
    data = jsonl(3) + b"\n" + jsonl(1)  # an empty line is allowed
    created = member.files.create(file=("requests.jsonl", data), purpose="batch")
    assert created.id.startswith("file_")
    assert created.object == "file"
    assert created.bytes == len(data)
    assert created.filename == "requests.jsonl"
    assert created.purpose == "batch"
    assert created.status == "processed"
    assert isinstance(created.created_at, int)

    assert member.files.retrieve(created.id) == created
    assert member.files.content(created.id).content == data
    assert created.id in [f.id for f in member.files.list()]
    assert [p.read_bytes() for p in files_dir.rglob(created.id)] == [data]  # in the deployment's files directory

    deleted = member.files.delete(created.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (created.id, "file", True)
    with pytest.raises(openai.NotFoundError):
        member.files.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        member.files.content(created.id)
    with pytest.raises(openai.NotFoundError):
        member.files.delete(created.id)
    assert created.id not in [f.id for f in member.files.list()]
    assert not list(files_dir.rglob(created.id))  # the bytes are gone


def test_list_pages_orders_and_filters(
    stack: Stack, tenant: str, worker_db: tuple[Database, Settings], files_dir: Path
) -> None:
    client = sdk(stack, stack.new_key(f"{tenant}-list", "member"))
    ids = [client.files.create(file=(f"f{i}.jsonl", jsonl(1)), purpose="batch").id for i in range(3)]

    first = client.files.list(limit=2)
    assert [f.id for f in first.data] == ids[:0:-1]  # newest first
    assert first.has_more is True
    second = client.files.list(limit=2, after=first.data[-1].id)
    assert [f.id for f in second.data] == [ids[0]]
    assert second.has_more is False
    assert [f.id for f in client.files.list(limit=1)] == ids[::-1]  # the SDK follows the pages itself
    assert [f.id for f in client.files.list(order="asc")] == ids

    raw = httpx.get(
        f"{stack.url}/v1/files",
        params={"limit": 2, "order": "asc"},
        headers={"Authorization": f"Bearer {client.api_key}"},
    ).json()
    assert raw["object"] == "list"
    assert (raw["first_id"], raw["last_id"], raw["has_more"]) == (ids[0], ids[1], True)

    # A batch's output, as a worker writes it: listed under its own purpose.
    db, settings = worker_db
    tenant_id = stack.sql("SELECT id FROM tenants WHERE name = %s", f"{tenant}-list")[0][0]
    with db.transaction() as tx:
        output = service.create_file(
            tx, storage_for(settings), tenant_id, "batch_output", "out.jsonl", iter([b'{"a": 1}\n', b'{"b": 2}\n'])
        )
    assert [f.id for f in client.files.list(purpose="batch_output")] == [output.id]
    assert [f.id for f in client.files.list(purpose="batch")] == ids[::-1]
    assert client.files.content(output.id).content == b'{"a": 1}\n{"b": 2}\n'
    assert client.files.retrieve(output.id).purpose == "batch_output"
    assert not leftovers(files_dir)


def test_worker_side_service_reads_what_the_api_stored(
    stack: Stack, tenant: str, member: openai.OpenAI, worker_db: tuple[Database, Settings]
) -> None:
    data = jsonl(5)
    file_id = member.files.create(file=("in.jsonl", data), purpose="batch").id
    db, settings = worker_db
    tenant_id = stack.sql("SELECT id FROM tenants WHERE name = %s", tenant)[0][0]
    with db.transaction() as tx:
        file = service.get_file(tx, tenant_id, file_id)
        assert file.bytes == len(data)
        assert b"".join(service.iter_lines(file, storage_for(settings))) == data
        assert len(list(service.iter_lines(file, storage_for(settings)))) == 5
        with pytest.raises(NotFound):
            service.get_file(tx, "ten_someone_else", file_id)
        with pytest.raises(NotFound):
            service.get_file(tx, tenant_id, "file_nope")


def test_roles(member: openai.OpenAI, viewer: openai.OpenAI) -> None:
    data = jsonl(1)
    file_id = member.files.create(file=("a.jsonl", data), purpose="batch").id
    assert viewer.files.retrieve(file_id).id == file_id
    assert viewer.files.content(file_id).content == data
    assert file_id in [f.id for f in viewer.files.list()]
    with pytest.raises(openai.PermissionDeniedError):
        viewer.files.create(file=("a.jsonl", data), purpose="batch")
    with pytest.raises(openai.PermissionDeniedError):
        viewer.files.delete(file_id)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=str(member.base_url), api_key="sy_nope", max_retries=0).files.list()


def test_another_tenants_file_is_unknown(stack: Stack, member: openai.OpenAI) -> None:
    file_id = member.files.create(file=("mine.jsonl", jsonl(1)), purpose="batch").id
    other = sdk(stack, stack.new_key(f"files-other-{secrets.token_hex(3)}", "member"))
    for call in (other.files.retrieve, other.files.content, other.files.delete):
        with pytest.raises(openai.NotFoundError):
            call(file_id)
    assert file_id not in [f.id for f in other.files.list()]
    assert member.files.retrieve(file_id).id == file_id  # untouched


@pytest.mark.parametrize("purpose", ["fine-tune", "batch_output", ""])
def test_bad_purpose_is_400_naming_purpose(member: openai.OpenAI, files_dir: Path, purpose: str) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        member.files.create(file=("a.jsonl", jsonl(1)), purpose=purpose)  # type: ignore[arg-type]
    error = raised.value.body
    assert isinstance(error, dict)
    assert error["param"] == "purpose", error
    assert "batch" in error["message"]
    assert not leftovers(files_dir)


@pytest.mark.parametrize(
    ("data", "line", "what"),
    [
        (jsonl(2) + b"not json\n" + jsonl(1), 3, "not valid JSON"),
        (jsonl(1) + b"\n[1, 2]\n", 3, "not a JSON object"),
        (b'{"a": 1}\n{"a": ', 2, "not valid JSON"),  # the last line, without its newline
        (b'{"a": "' + b"x" * 3_000_000 + b'"}\n', 1, "longer than"),  # a line is at most a request body
    ],
)
def test_batch_file_that_is_not_jsonl_names_the_line(
    member: openai.OpenAI, files_dir: Path, data: bytes, line: int, what: str
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        member.files.create(file=("bad.jsonl", data), purpose="batch")
    error = raised.value.body
    assert isinstance(error, dict)
    assert error["param"] == "file", error
    assert f"line {line} " in error["message"], error
    assert what in error["message"], error
    assert not leftovers(files_dir)


def test_too_many_lines(member: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        member.files.create(file=("many.jsonl", b'{"a":1}\n' * 50_001), purpose="batch")
    assert isinstance(raised.value.body, dict)
    assert "line 50001 " in raised.value.body["message"]
    assert member.files.create(file=("max.jsonl", b'{"a":1}\n' * 50_000), purpose="batch").bytes == 8 * 50_000


def test_form_fields_in_any_order_and_bad_forms(stack: Stack, tenant: str, files_dir: Path) -> None:
    headers = {"Authorization": f"Bearer {stack.new_key(tenant, 'member')}"}

    def post(parts: list[tuple[str, tuple[str | None, bytes]]]) -> httpx.Response:
        return httpx.post(f"{stack.url}/v1/files", files=parts, headers=headers, timeout=30)

    # The file before the purpose: checked all the same once the purpose is known.
    bad_first = post([("file", ("x.jsonl", b'{"a": 1}\nnope\n')), ("purpose", (None, b"batch"))])
    assert (bad_first.status_code, bad_first.json()["error"]["param"]) == (400, "file"), bad_first.text
    assert "line 2 " in bad_first.json()["error"]["message"]
    good_first = post([("file", ("x.jsonl", b'{"a": 1}\n')), ("purpose", (None, b"batch"))])
    assert good_first.status_code == 200, good_first.text
    assert good_first.json()["filename"] == "x.jsonl"

    no_purpose = post([("file", ("x.jsonl", b'{"a": 1}\n'))])
    assert (no_purpose.status_code, no_purpose.json()["error"]["param"]) == (400, "purpose")
    no_file = post([("purpose", (None, b"batch"))])
    assert (no_file.status_code, no_file.json()["error"]["param"]) == (400, "file")
    two_files = post([("purpose", (None, b"batch")), ("file", ("a", b"{}\n")), ("file", ("b", b"{}\n"))])
    assert (two_files.status_code, two_files.json()["error"]["param"]) == (400, "file")
    path_name = post([("purpose", (None, b"batch")), ("file", ("../../etc/x.jsonl", b"{}\n"))])
    assert path_name.json()["filename"] == "x.jsonl"

    as_json = httpx.post(f"{stack.url}/v1/files", json={"purpose": "batch"}, headers=headers)
    assert as_json.status_code == 415, as_json.text
    assert as_json.json()["error"]["param"] == "Content-Type"
    boundary = "b0undary"
    cut_short = httpx.post(
        f"{stack.url}/v1/files",
        content=(
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n{{"a": 1}}\n'
        ).encode(),
        headers={**headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert cut_short.status_code == 400, cut_short.text
    assert "closing boundary" in cut_short.json()["error"]["message"]
    assert not leftovers(files_dir)


@pytest.fixture(scope="module")
def small_api(stack: Stack) -> Iterator[str]:
    """An API process of the same deployment with a small file limit."""
    port = free_port()
    proc = stack.start(
        "api-small-files", cli("api", "--port", str(port)), env={"SWITCHYARD_MAX_FILE_BYTES": str(SMALL_LIMIT)}
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz", proc)
    yield url
    proc.stop()


def test_upload_over_the_file_limit_is_413(stack: Stack, tenant: str, small_api: str, files_dir: Path) -> None:
    client = sdk(stack, stack.new_key(tenant, "member"), url=small_api)
    line = b'{"a": "' + b"x" * 1000 + b'"}\n'
    exactly = line * (SMALL_LIMIT // len(line)) + b"{}" + b" " * (SMALL_LIMIT % len(line) - 2)
    assert len(exactly) == SMALL_LIMIT
    assert client.files.create(file=("at-limit.jsonl", exactly), purpose="batch").bytes == SMALL_LIMIT

    for size in (SMALL_LIMIT + 1, 2 * 1024 * 1024):  # over the file limit; over it and its framing allowance
        with pytest.raises(openai.APIStatusError) as raised:
            client.files.create(file=("big.jsonl", (line * (size // len(line) + 1))[:size]), purpose="batch")
        assert raised.value.status_code == 413
        error = raised.value.body
        assert isinstance(error, dict)
        assert (error["type"], error["param"]) == ("request_too_large", "file"), error
        assert f"{SMALL_LIMIT} bytes (SWITCHYARD_MAX_FILE_BYTES)" in error["message"]

    # Sent without a Content-Length: stopped while it streams.
    def chunks() -> Iterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'
        for _ in range(100):
            yield line
        yield b"\r\n--b--\r\n"

    streamed = httpx.post(
        f"{small_api}/v1/files",
        content=chunks(),
        headers={"Authorization": f"Bearer {client.api_key}", "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert streamed.status_code == 413, streamed.text
    # Other bodies keep the request limit (2 MiB), on this path too.
    json_body = httpx.post(
        f"{small_api}/v1/files",
        content=b"x" * (3 * 1024 * 1024),
        headers={"Authorization": f"Bearer {client.api_key}", "Content-Type": "application/json"},
    )
    assert json_body.status_code == 413
    assert json_body.json()["error"]["param"] == "body"
    assert not leftovers(files_dir)


def rss_kib(pid: int, field: str) -> int:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith(f"{field}:"):
            return int(row.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def test_large_upload_and_download_stream(stack: Stack, member: openai.OpenAI) -> None:
    data = jsonl(20_000, pad=950)
    assert len(data) > 20 * 1024 * 1024
    pid = stack.api.pid
    member.files.create(file=("warm-up.jsonl", jsonl(100, pad=950)), purpose="batch")  # first-use allocations

    before = rss_kib(pid, "VmRSS")
    # Reset the peak ("VmHWM") so that it tells this upload's high-water mark.
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    created = member.files.create(file=("big.jsonl", data), purpose="batch")
    assert created.bytes == len(data)
    peak = rss_kib(pid, "VmHWM")
    # The whole file in memory would be 20 MiB more; streamed, the process holds a few blocks at a time.
    assert peak - before < 8 * 1024, (before, peak)

    Path(f"/proc/{pid}/clear_refs").write_text("5")
    before = rss_kib(pid, "VmRSS")
    assert member.files.content(created.id).content == data
    assert rss_kib(pid, "VmHWM") - before < 8 * 1024


def test_storage_writes_are_atomic(tmp_path: Path) -> None:
    storage = DirectoryStorage(tmp_path)
    assert storage.write("t/f", [b"ab", b"c\n", b"d"]) == 5
    assert list(storage.iter_lines("t/f")) == [b"abc\n", b"d"]
    assert storage.size("t/f") == 5

    def failing() -> Iterator[bytes]:
        yield b"new"
        raise RuntimeError("the source failed")

    with pytest.raises(RuntimeError):
        storage.write("t/f", failing())
    with storage.open("t/f") as f:
        assert f.read() == b"abc\nd"  # the old bytes, whole
    assert not leftovers(tmp_path)
    storage.delete("t/f")
    storage.delete("t/f")  # already gone: fine
    with pytest.raises(FileNotFoundError):
        storage.size("t/f")
    for key in ("../x", "/etc/passwd", "t/../x", "", "t//x"):
        with pytest.raises(ValueError, match="invalid storage key"):
            storage.path(key)


def test_openapi_documents_the_files_api(stack: Stack) -> None:
    paths = httpx.get(f"{stack.url}/openapi.json").json()["paths"]
    upload = paths["/v1/files"]["post"]
    assert upload["requestBody"]["content"]["multipart/form-data"]["schema"] == {
        "$ref": "#/components/schemas/FileUpload"
    }
    assert {"400", "401", "403", "413", "415"} <= set(upload["responses"])
    content = paths["/v1/files/{file_id}/content"]["get"]["responses"]["200"]["content"]
    assert content == {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    assert paths["/v1/files/{file_id}"]["delete"]["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/FileDeleted"
    }
