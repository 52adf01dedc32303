"""What the Files API answers, in OpenAI's shapes, and the upload form (for the OpenAPI document)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

FilePurpose = Literal["batch", "batch_output"]


class FileObject(BaseModel):
    id: str
    object: Literal["file"]
    bytes: int = Field(description="The file's size.")
    created_at: int = Field(description="Unix seconds.")
    filename: str
    purpose: FilePurpose = Field(description="`batch`: a batch's input; `batch_output`: written by a batch.")
    status: Literal["processed"]
    status_details: None = None
    expires_at: None = None


class FileList(BaseModel):
    object: Literal["list"]
    data: list[FileObject]
    has_more: bool = Field(description="Whether more files follow: pass `last_id` as `after` to get them.")
    first_id: str | None
    last_id: str | None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"]
    deleted: Literal[True]


class FileUpload(BaseModel):
    """`POST /v1/files`, a `multipart/form-data` body (streamed to storage as it arrives)."""

    file: bytes = Field(
        description="The file. With purpose `batch`: JSONL, one JSON object a line, at most 50,000 lines."
    )
    purpose: Literal["batch"]
