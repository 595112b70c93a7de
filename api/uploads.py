"""Streaming multipart parsing with a size limit checked while the bytes arrive.

Starlette's form parser spools a whole upload before the handler runs, so a
limit could only be checked after a huge file had been written.  Here the
request body is fed chunk by chunk to python-multipart: the model part goes
straight to a temporary file (constant memory), small text parts stay in
memory, and the request is refused with 413 the moment the model passes the
limit; the partial file is removed.  Everything else a client sends is bounded
too: each text field, all text fields together and the number of parts (the
parser itself refuses a part with more than 8 headers or a header over 4 KiB),
so a request of endless small fields cannot fill the API's memory.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from api.errors import ApiError

TEXT_FIELD_LIMIT = 64 * 1024
TEXT_TOTAL_LIMIT = 4 * TEXT_FIELD_LIMIT  # all text fields together
MAX_PARTS = 16
HEADER_LIMIT = 8 * 4224  # python-multipart's own bound on one part's headers
FILE_FIELDS = ("model",)


@dataclass
class Upload:
    """What a multipart request carried: one file on disk and small text fields."""

    path: Path | None = None
    filename: str | None = None
    size: int = 0
    fields: dict[str, str] = field(default_factory=dict)

    def discard(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class _Receiver:
    def __init__(self, max_bytes: int, directory: Path) -> None:
        self.max_bytes = max_bytes
        self.directory = directory
        self.upload = Upload()
        self.header_field = b""
        self.header_value = b""
        self.headers: dict[bytes, bytes] = {}
        self.name = ""
        self.file: IO[bytes] | None = None
        self.text = bytearray()
        self.text_total = 0
        self.parts = 0

    # python-multipart callbacks -------------------------------------------
    def on_part_begin(self) -> None:
        self.headers, self.name, self.text = {}, "", bytearray()
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise ApiError(413, "too_many_fields", f"the form has more than {MAX_PARTS} parts")

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_field.lower()] = self.header_value
        self.header_field = self.header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        self.name = options.get(b"name", b"").decode("utf-8", "replace")
        if self.name in FILE_FIELDS:
            if self.upload.path is not None:
                raise ApiError(
                    422, "duplicate_field", f"only one {self.name!r} file may be sent", field=self.name
                )
            filename = options.get(b"filename", b"model.pt").decode("utf-8", "replace")
            self.upload.filename = os.path.basename(filename.replace("\\", "/"))[:255] or "model.pt"
            handle, path = tempfile.mkstemp(dir=self.directory, prefix="upload-", suffix=".pt")
            self.upload.path = Path(path)
            self.file = os.fdopen(handle, "wb")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self.file is not None:
            self.upload.size += len(chunk)
            if self.upload.size > self.max_bytes:
                raise ApiError(
                    413,
                    "upload_too_large",
                    f"the model file is larger than the limit of {self.max_bytes} bytes",
                    field="model",
                )
            self.file.write(chunk)
        else:
            self.text += chunk
            self.text_total += len(chunk)
            if len(self.text) > TEXT_FIELD_LIMIT:
                raise ApiError(
                    413, "field_too_large", f"form field {self.name!r} is over 64 KiB", field=self.name
                )
            if self.text_total > TEXT_TOTAL_LIMIT:
                raise ApiError(413, "fields_too_large", "the form's text fields are over 256 KiB together")

    def on_part_end(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        elif self.name:
            self.upload.fields[self.name] = self.text.decode("utf-8", "replace")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


async def receive_upload(request: Request, *, max_bytes: int, directory: Path) -> Upload:
    """Parse a multipart request; on any error nothing is left on disk."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise ApiError(
            415,
            "unsupported_media_type",
            "send multipart/form-data with a 'model' file and a 'spec' JSON field",
        )
    declared = request.headers.get("content-length")
    if (
        declared
        and declared.isdigit()
        and int(declared) > max_bytes + TEXT_TOTAL_LIMIT + MAX_PARTS * HEADER_LIMIT
    ):
        raise ApiError(
            413,
            "upload_too_large",
            f"the upload is larger than the limit of {max_bytes} bytes",
            field="model",
        )
    directory.mkdir(parents=True, exist_ok=True)
    receiver = _Receiver(max_bytes, directory)
    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": receiver.on_part_begin,
            "on_header_field": receiver.on_header_field,
            "on_header_value": receiver.on_header_value,
            "on_header_end": receiver.on_header_end,
            "on_headers_finished": receiver.on_headers_finished,
            "on_part_data": receiver.on_part_data,
            "on_part_end": receiver.on_part_end,
        },
    )
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except ApiError:
        receiver.close()
        receiver.upload.discard()
        raise
    except Exception as exc:
        receiver.close()
        receiver.upload.discard()
        raise ApiError(400, "bad_multipart", f"the multipart body could not be parsed: {exc}") from exc
    receiver.close()
    return receiver.upload
