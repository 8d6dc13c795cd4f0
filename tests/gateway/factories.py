"""Small image factories for gateway tests: every format the contract accepts, and bad ones."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def _noise(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((height, width))


def png8(width: int = 64, height: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((_noise(width, height) * 255).astype(np.uint8), mode="L").save(buf, "PNG")
    return buf.getvalue()


def png16(width: int = 64, height: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((_noise(width, height) * 65535).astype(np.uint16)).save(buf, "PNG")
    return buf.getvalue()


def tiff16(width: int = 64, height: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((_noise(width, height) * 65535).astype(np.uint16)).save(buf, "TIFF")
    return buf.getvalue()


def jpeg_rgb(width: int = 64, height: int = 48) -> bytes:
    rgb = (np.stack([_noise(width, height)] * 3, axis=-1) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def bmp(width: int = 64, height: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((_noise(width, height) * 255).astype(np.uint8), mode="L").save(buf, "BMP")
    return buf.getvalue()


def truncated(data: bytes) -> bytes:
    """The first half of a file: the header still parses, the pixel data ends early."""
    return data[: len(data) // 2]


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_declaring(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose header claims `width` x `height` 8-bit gray pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def finish_job(database_url: str, job_id: str, *, fail: bool = False) -> None:
    """Play the worker: mark a job succeeded with a result (or failed with a reason)."""
    from db.models import Job, JobStatus, Result, utcnow
    from db.session import session_scope

    with session_scope(database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.finished_at = utcnow()
        if fail:
            job.status = JobStatus.failed
            job.error_code = "corrupt_image"
            job.error_message = "the worker could not decode it"
            return
        job.status = JobStatus.succeeded
        session.add(
            Result(
                job_id=job_id,
                model_name="el_defect_classifier",
                model_version="3",
                probabilities={"crack": 0.91, "finger": 0.02},
                defects=["crack"],
                thresholds={"crack": 0.35, "finger": 0.5},
                inference_ms=4.0,
                queue_wait_ms=10.0,
            )
        )
