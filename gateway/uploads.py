"""Upload validation: every check runs before a job exists, so a refused file makes no job.

The bytes decide, never the declared content type: `eldefect.image_check.verify_image` sniffs
the header (format, pixel count) and then fully decodes the pixels with the decoders the
worker uses, so a truncated file is refused here.
Files arrive spooled (gateway.forms) and are read one at a time: a batch is validated file by
file, then stored file by file in one transaction, so at most one file's bytes (and one
decode per slot) are in memory at once, whatever the batch's size.
`eldefect.image_check` (Pillow; never numpy unless a float TIFF arrives) is imported on the
first upload or by the app's warm-up thread, not on the way to serving the first request.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from starlette.datastructures import UploadFile

from db.jobs import NewImage
from eldefect.settings import Settings
from gateway.errors import ApiError

if TYPE_CHECKING:
    from eldefect.image_check import ImageInfo

# ImageDecodeError.code -> HTTP status.
_STATUS = {
    "empty_file": 400,
    "unsupported_media_type": 415,
    "too_many_pixels": 413,
    "invalid_image": 422,
    "corrupt_image": 422,
}
# How much of a client's file name messages repeat.
_LABEL_NAME_MAX = 120


class UploadRefused(ApiError):
    """A file was refused; `code` says why (the same codes the metrics count)."""


REFUSAL_CODES = (*_STATUS, "file_too_large", "too_many_files")


def decode_slots(settings: Settings) -> threading.BoundedSemaphore:
    """Full decodes at a time: each can hold a large image's pixels; more than the CPUs this
    process may use cannot finish sooner, only hold more memory at once."""
    return threading.BoundedSemaphore(settings.effective_decode_slots)


def _named(label: str | None, message: str) -> str:
    return f"{label}: {message}" if label else message


def label_for(filename: str | None, index: int | None = None) -> str | None:
    """How messages name a file: `'cell.png'`, or `files[2] 'cell.png'` within a batch."""
    parts = [f"files[{index}]"] if index is not None else []
    if filename:
        shown = filename if len(filename) <= _LABEL_NAME_MAX else filename[:_LABEL_NAME_MAX] + "..."
        parts.append(repr(shown))
    return " ".join(parts) or None


def read_limited(stream: BinaryIO, *, max_bytes: int, label: str | None = None) -> bytes:
    """Read a spooled upload from its start, refusing it unread when it is over `max_bytes`.

    The size comes from seeking to the end: `read(max_bytes + 1)` would allocate a buffer of
    the limit (20 MiB) for every file, however small.
    """
    size = stream.seek(0, io.SEEK_END)
    if size > max_bytes:
        raise UploadRefused(
            413, "file_too_large", _named(label, f"the file is larger than {max_bytes} bytes")
        )
    stream.seek(0)
    return stream.read()


def validate_image(
    data: bytes, *, max_pixels: int, slots: threading.BoundedSemaphore, label: str | None = None
) -> ImageInfo:
    """Check the bytes are one intact, supported image within the pixel limit."""
    from eldefect.image_check import ImageDecodeError, verify_image

    try:
        with slots:
            return verify_image(data, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        status = _STATUS.get(exc.code, 422)
        raise UploadRefused(status, exc.code, _named(label, exc.message)) from None


@dataclass(frozen=True)
class FilePart:
    """One spooled file of a form, with the ids that go with it."""

    file: UploadFile
    module_id: str | None = None
    cell_id: str | None = None
    index: int | None = None  # position within a batch

    @property
    def label(self) -> str | None:
        return label_for(self.file.filename, self.index)

    def read(self, settings: Settings) -> bytes:
        return read_limited(self.file.file, max_bytes=settings.max_upload_bytes, label=self.label)

    def as_upload(self, data: bytes, info: ImageInfo) -> NewImage:
        return NewImage(
            data=data,
            meta=info,
            filename=self.file.filename,
            module_id=self.module_id,
            cell_id=self.cell_id,
        )


def check_part(
    part: FilePart, *, settings: Settings, slots: threading.BoundedSemaphore
) -> tuple[bytes, ImageInfo]:
    """Read and validate one file (raises UploadRefused)."""
    data = part.read(settings)
    info = validate_image(data, max_pixels=settings.max_image_pixels, slots=slots, label=part.label)
    return data, info


def receive_upload(
    part: FilePart, *, settings: Settings, slots: threading.BoundedSemaphore
) -> NewImage:
    """One validated file, ready to become a job."""
    return part.as_upload(*check_part(part, settings=settings, slots=slots))


def check_batch(
    parts: Sequence[FilePart], *, settings: Settings, slots: threading.BoundedSemaphore
) -> list[ImageInfo]:
    """Validate every file, one at a time, keeping only what the header said of each."""
    return [check_part(part, settings=settings, slots=slots)[1] for part in parts]


def stored_uploads(
    parts: Sequence[FilePart], infos: Sequence[ImageInfo], *, settings: Settings
) -> Iterator[NewImage]:
    """The validated files as uploads to store, each read from its spool only when asked."""
    for part, info in zip(parts, infos, strict=True):
        yield part.as_upload(part.read(settings), info)
