"""A `multipart/form-data` upload read as it arrives: the file's bytes are handed on chunk by chunk (to be
streamed to storage), never gathered in memory or spooled to a temporary file as `request.form()` would."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from switchyard.core.errors import MalformedRequest, UnsupportedMediaType
from switchyard.gateway_api.bodies import media_type

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

# The form's other fields are small (`purpose`): they are kept in memory, so they are capped.
MAX_FIELD_BYTES = 4096
MAX_HEADER_BYTES = 8192
MAX_PARTS = 20


class FileForm:
    """One upload: the part named `file_field` is streamed by `file_chunks()`; each other field is handed to
    `on_field(name, value)` as soon as it has been read (it may come before or after the file)."""

    def __init__(self, request: Request, *, on_field: Callable[[str, str], None], file_field: str = "file") -> None:
        if media_type(request) != "multipart/form-data":
            raise UnsupportedMediaType(
                f"the body must be sent with Content-Type: multipart/form-data (got {media_type(request) or 'none'})",
                param="Content-Type",
                code="unsupported_media_type",
            )
        _, params = parse_options_header(request.headers["content-type"])
        boundary = params.get(b"boundary")
        if not boundary:
            raise MalformedRequest("the multipart Content-Type names no boundary", param="Content-Type")
        self.request = request
        self.file_field = file_field
        self.on_field = on_field
        # What the file part's Content-Disposition names (None until it has been seen, or when it names none).
        self.filename: str | None = None
        self._boundary = boundary
        self._seen_file = False
        self._ended = False
        self._parts = 0
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._name = ""
        self._in_file = False
        self._field: bytearray | None = None
        self._chunks: list[bytes] = []

    async def file_chunks(self) -> AsyncIterator[bytes]:
        """The file's bytes as they arrive; the whole body is read (fields after the file included) before it
        ends. A body without a file, or cut short before its closing boundary, is an error."""
        callbacks: MultipartCallbacks = {
            "on_part_begin": self._part_begin,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_end": self._end,
        }
        parser = MultipartParser(self._boundary, callbacks)
        try:
            async for body in self.request.stream():
                parser.write(body)
                chunks, self._chunks = self._chunks, []
                for chunk in chunks:
                    yield chunk
            parser.finalize()
        except MultipartParseError as exc:
            raise MalformedRequest(f"the multipart body is malformed: {exc}", param="body") from None
        if not self._ended:
            raise MalformedRequest("the multipart body ended before its closing boundary", param="body")
        if not self._seen_file:
            raise MalformedRequest(f"a file is required in the '{self.file_field}' field", param=self.file_field)

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise MalformedRequest(f"the form has more than {MAX_PARTS} fields", param="body")
        self._disposition = b""
        self._name = ""
        self._in_file = False
        self._field = None

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]
        self._check_header()

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]
        self._check_header()

    def _check_header(self) -> None:
        if len(self._header_name) + len(self._header_value) > MAX_HEADER_BYTES:
            raise MalformedRequest(f"a part's header is longer than {MAX_HEADER_BYTES} bytes", param="body")

    def _header_end(self) -> None:
        if bytes(self._header_name).strip().lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name")
        if name is None:
            raise MalformedRequest("a part of the form has no name in its Content-Disposition", param="body")
        self._name = name.decode("utf-8", "replace")
        if self._name == self.file_field:
            if self._seen_file:
                raise MalformedRequest("only one file may be uploaded at a time", param=self.file_field)
            self._seen_file = True
            self._in_file = True
            filename = options.get(b"filename")
            self.filename = filename.decode("utf-8", "replace") if filename is not None else None
        elif b"filename" not in options:
            self._field = bytearray()
        # Another file part is skipped: its bytes are neither kept nor stored.

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self._chunks.append(data[start:end])
        elif self._field is not None:
            self._field += data[start:end]
            if len(self._field) > MAX_FIELD_BYTES:
                raise MalformedRequest(f"the field is longer than {MAX_FIELD_BYTES} bytes", param=self._name)

    def _part_end(self) -> None:
        if self._field is not None:
            self.on_field(self._name, self._field.decode("utf-8", "replace"))
        self._in_file = False
        self._field = None

    def _end(self) -> None:
        self._ended = True
