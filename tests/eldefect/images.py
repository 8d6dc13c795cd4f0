"""Small factories for image bytes in every format and depth the product accepts."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(array: np.ndarray, fmt: str, **params: object) -> bytes:
    """uint8 arrays encode as 8-bit, uint16 as 16-bit, (H, W, 3) as RGB."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **params)
    return buf.getvalue()


def gradient(height: int = 40, width: int = 60) -> np.ndarray:
    """A 0..1 float ramp along x."""
    return np.tile(np.linspace(0, 1, width, dtype=np.float32), (height, 1))


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that declares a huge size: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _paeth(left: np.ndarray, up: np.ndarray, up_left: np.ndarray) -> np.ndarray:
    base = left + up - up_left
    pa, pb, pc = np.abs(base - left), np.abs(base - up), np.abs(base - up_left)
    return np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))


def png16_rgb(samples: np.ndarray) -> bytes:
    """A 16-bit RGB PNG (which Pillow cannot write) from (H, W, 3) uint16 samples.

    Rows cycle through all five PNG filters, so a decoder's unfiltering is exercised too.
    """
    height, width, _ = samples.shape
    raw = samples.astype(">u2").view(np.uint8).reshape(height, width * 6).astype(np.int32)
    bpp = 6  # bytes per pixel: the distance filters look back
    rows = []
    for y in range(height):
        row = raw[y]
        up = raw[y - 1] if y else np.zeros_like(row)
        left = np.concatenate([np.zeros(bpp, np.int32), row[:-bpp]])
        up_left = np.concatenate([np.zeros(bpp, np.int32), up[:-bpp]])
        kind = y % 5
        predictor = [
            np.zeros_like(row),
            left,
            up,
            (left + up) // 2,
            _paeth(left, up, up_left),
        ][kind]
        rows.append(bytes([kind]) + ((row - predictor) % 256).astype(np.uint8).tobytes())

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    idat = zlib.compress(b"".join(rows))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
