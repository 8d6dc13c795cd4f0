"""Upload validation: every check runs before a job exists, so a refused file makes no job.

The bytes decide, never the declared content type: `eldefect.imaging.verify_image` sniffs
the header (format, pixel count) and then fully decodes the pixels with the decoders the
worker uses, so a truncated file is refused here.
`eldefect.imaging` (numpy, Pillow) is imported on the first upload, not when the app starts.
"""

from __future__ import annotations

import os
import threading
from typing import BinaryIO

from fastapi import UploadFile

from db.jobs import NewImage
from eldefect.settings import Settings
from gateway.errors import ApiError

# Full decodes at a time: each can hold a large image's pixels; more than the cores cannot
# finish sooner, only hold more memory at once.
_DECODE_SLOTS = threading.BoundedSemaphore(os.cpu_count() or 2)

# ImageDecodeError.code -> HTTP status.
_STATUS = {
    "empty_file": 400,
    "unsupported_media_type": 415,
    "too_many_pixels": 413,
    "invalid_image": 422,
    "corrupt_image": 422,
}


class UploadRefused(ApiError):
    """A file was refused; `code` says why (the same codes the metrics count)."""


REFUSAL_CODES = (*_STATUS, "file_too_large", "too_many_files")


def _named(label: str | None, message: str) -> str:
    return f"{label}: {message}" if label else message


def label_for(filename: str | None, index: int | None = None) -> str | None:
    """How messages name a file: `'cell.png'`, or `files[2] 'cell.png'` within a batch."""
    parts = [f"files[{index}]"] if index is not None else []
    if filename:
        parts.append(repr(filename))
    return " ".join(parts) or None


def read_limited(stream: BinaryIO, *, max_bytes: int, label: str | None = None) -> bytes:
    """Read the upload, at most `max_bytes` + 1 bytes: one byte more means it is too large."""
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UploadRefused(
            413, "file_too_large", _named(label, f"the file is larger than {max_bytes} bytes")
        )
    return data


def validate_image(
    data: bytes,
    *,
    max_pixels: int,
    label: str | None = None,
    filename: str | None = None,
    module_id: str | None = None,
    cell_id: str | None = None,
) -> NewImage:
    """Check the bytes are one intact, supported image within the pixel limit."""
    from eldefect.imaging import ImageDecodeError, verify_image

    try:
        with _DECODE_SLOTS:
            info = verify_image(data, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        status = _STATUS.get(exc.code, 422)
        raise UploadRefused(status, exc.code, _named(label, exc.message)) from None
    return NewImage(data=data, meta=info, filename=filename, module_id=module_id, cell_id=cell_id)


def receive_upload(
    file: UploadFile,
    *,
    settings: Settings,
    index: int | None = None,
    module_id: str | None = None,
    cell_id: str | None = None,
) -> NewImage:
    """Read and validate one multipart file (raises UploadRefused)."""
    label = label_for(file.filename, index)
    data = read_limited(file.file, max_bytes=settings.max_upload_bytes, label=label)
    return validate_image(
        data,
        max_pixels=settings.max_image_pixels,
        label=label,
        filename=file.filename,
        module_id=module_id,
        cell_id=cell_id,
    )
