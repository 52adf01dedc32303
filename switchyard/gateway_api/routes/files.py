"""`/v1/files`: OpenAI's Files API — upload (streamed to the files storage), list, read, download, delete."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, BinaryIO, Literal

import anyio
import anyio.to_thread
from fastapi import APIRouter, Query, Request
from starlette.responses import StreamingResponse

from switchyard.files import service
from switchyard.files.schemas import FileDeleted, FileList, FileObject, FilePurpose, FileUpload
from switchyard.files.service import StoredUpload
from switchyard.gateway_api.api_docs import errors, request_body
from switchyard.gateway_api.deps import Member, StateDep, TxDep, Viewer
from switchyard.gateway_api.input_guard import OPENAI_TAG
from switchyard.gateway_api.responses import FastJSONResponse
from switchyard.gateway_api.state import ApiState
from switchyard.gateway_api.uploads import FileForm

# OpenAI-compatible: bad input is a 400, as OpenAI answers it.
router = APIRouter(prefix="/v1/files", tags=["files", OPENAI_TAG])

# Downloads are read from storage and sent in blocks of this size.
_READ_BLOCK = 256 * 1024
_CONTENT: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The file's bytes.",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.post(
    "",
    response_model=FileObject,
    openapi_extra=request_body(FileUpload, "multipart/form-data"),
)
async def upload_file(request: Request, principal: Member, state: StateDep) -> FastJSONResponse:
    """Upload a file (`multipart/form-data`: `file`, `purpose: batch`), streamed to storage as it arrives.

    A `batch` file must be JSONL: every non-empty line a JSON object, at most 50,000 lines; the first bad line
    is named. Larger than `SWITCHYARD_MAX_FILE_BYTES` (200 MiB by default): `413`."""
    settings = state.settings
    # A batch line is one request: it may be as large as a request body.
    check = service.UploadCheck(max_bytes=settings.max_file_bytes, max_line_bytes=settings.max_body_bytes)
    form = FileForm(request, on_field=check.field)
    stored = await service.store_upload(state.files, principal.tenant_id, form.file_chunks(), check)
    try:
        filename = service.check_filename(form.filename or "file")
        assert check.purpose is not None  # UploadCheck.end() refused a form without one
        view = await anyio.to_thread.run_sync(_record, state, principal.tenant_id, stored, check.purpose, filename)
    except BaseException:
        # Shielded: a client that went away must not leave the bytes of a file that has no row.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(state.files.delete, stored.key)
        raise
    return FastJSONResponse(view)


def _record(state: ApiState, tenant_id: str, stored: StoredUpload, purpose: str, filename: str) -> dict[str, object]:
    with state.db.transaction() as tx:
        return service.record_upload(tx, tenant_id, stored, purpose, filename)


@router.get("", response_model=FileList)
def list_files(
    principal: Viewer,
    tx: TxDep,
    purpose: FilePurpose | None = None,
    after: Annotated[str | None, Query(max_length=40)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
) -> FastJSONResponse:
    """The tenant's files, newest first unless `order=asc`; pass `last_id` as `after` while `has_more`."""
    return FastJSONResponse(
        service.list_files(tx, principal.tenant_id, purpose=purpose, after=after, limit=limit, order=order)
    )


@router.get("/{file_id}", response_model=FileObject, responses=errors(404))
def get_file(file_id: str, principal: Viewer, tx: TxDep) -> FastJSONResponse:
    """A file's description."""
    return FastJSONResponse(service.file_object(service.get_file(tx, principal.tenant_id, file_id)))


@router.get("/{file_id}/content", response_class=StreamingResponse, responses={**_CONTENT, **errors(404)})
def file_content(file_id: str, principal: Viewer, tx: TxDep, state: StateDep) -> StreamingResponse:
    """The file's bytes, streamed from storage."""
    file = service.get_file(tx, principal.tenant_id, file_id)
    reader = service.open_content(file, state.files)
    # A sync iterator: Starlette reads it in a worker thread, so the event loop never waits on the disk.
    return StreamingResponse(
        _blocks(reader), media_type="application/octet-stream", headers={"content-length": str(file.bytes)}
    )


def _blocks(reader: BinaryIO) -> Iterator[bytes]:
    with reader:
        while block := reader.read(_READ_BLOCK):
            yield block


@router.delete("/{file_id}", response_model=FileDeleted, responses=errors(404))
def delete_file(file_id: str, principal: Member, tx: TxDep, state: StateDep) -> FastJSONResponse:
    """Delete a file: it is unknown from now on and its bytes are removed."""
    return FastJSONResponse(service.delete_file(tx, state.files, principal.tenant_id, file_id))
