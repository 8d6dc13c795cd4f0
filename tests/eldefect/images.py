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


def patch_tiff_tag(data: bytes, tag: int, value: int) -> bytes:
    """A little-endian TIFF with one inline SHORT or LONG tag of its first IFD set to `value`."""
    out = bytearray(data)
    assert out[:4] == b"II*\x00", "a little-endian TIFF"
    ifd = struct.unpack_from("<I", out, 4)[0]
    for entry in range(ifd + 2, ifd + 2 + 12 * struct.unpack_from("<H", out, ifd)[0], 12):
        entry_tag, kind = struct.unpack_from("<HH", out, entry)
        if entry_tag == tag:
            struct.pack_into("<H" if kind == 3 else "<I", out, entry + 8, value)
            return bytes(out)
    raise KeyError(tag)


def premultiplied_la_tiff(width: int = 8, height: int = 6) -> bytes:
    """Gray with premultiplied alpha (ExtraSamples 1), which Pillow opens as mode "La"."""
    buf = io.BytesIO()
    Image.new("LA", (width, height), (100, 200)).save(buf, format="TIFF")
    return patch_tiff_tag(buf.getvalue(), 338, 1)  # ExtraSamples: 2 (unassociated) -> 1


def tiled_tiff(width: int, height: int, tile_width: int, tile_length: int) -> bytes:
    """An 8-bit gray, deflate-compressed TIFF stored in tiles (which Pillow cannot write)."""
    across, down = -(-width // tile_width), -(-height // tile_length)
    tile = zlib.compress(bytes(tile_width * tile_length), 9)  # black; every tile the same
    offsets = [8 + i * len(tile) for i in range(across * down)]
    ifd = 8 + len(tile) * len(offsets)
    ifd += ifd % 2  # IFDs start on a word boundary
    entries = [  # (tag, type: 3 SHORT or 4 LONG, values), in tag order
        (256, 4, [width]),
        (257, 4, [height]),
        (258, 3, [8]),  # bits per sample
        (259, 3, [8]),  # deflate
        (262, 3, [1]),  # black is zero
        (277, 3, [1]),  # samples per pixel
        (322, 4, [tile_width]),
        (323, 4, [tile_length]),
        (324, 4, offsets),
        (325, 4, [len(tile)] * len(offsets)),
    ]
    table, spill = b"", b""
    spill_at = ifd + 2 + 12 * len(entries) + 4
    for tag, kind, values in entries:
        raw = struct.pack("<" + ("H" if kind == 3 else "I") * len(values), *values)
        if len(raw) <= 4:
            table += struct.pack("<HHI", tag, kind, len(values)) + raw.ljust(4, b"\x00")
        else:  # values that do not fit the entry go after the IFD
            table += struct.pack("<HHII", tag, kind, len(values), spill_at + len(spill))
            spill += raw
    body = (tile * len(offsets)).ljust(ifd - 8, b"\x00")
    ifd_bytes = struct.pack("<H", len(entries)) + table + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", ifd) + body + ifd_bytes + spill


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each segment of a JPEG; a scan's end includes its coded data."""
    segments, at = [], 2  # after SOI
    while at < len(data):
        marker = data[at + 1]
        if marker == 0xD9:  # EOI
            segments.append((marker, at, at + 2))
            break
        end = at + 2 + struct.unpack_from(">H", data, at + 2)[0]
        if marker == 0xDA:  # coded data runs to the next marker other than a stuffed FF or RSTn
            while not (data[end] == 0xFF and data[end + 1] not in (0, *range(0xD0, 0xD8))):
                end += 1
        segments.append((marker, at, end))
        at = end
    return segments


def jpeg_repeating_a_scan(width: int, height: int, repeats: int) -> bytes:
    """A flat progressive gray JPEG whose smallest scan follows itself `repeats` more times.

    Pillow decodes it without complaint, each copy costing a pass over the whole image.
    """
    buf = io.BytesIO()
    Image.new("L", (width, height), 128).save(buf, format="JPEG", progressive=True)
    data = buf.getvalue()
    _size, start, end = min(
        (end - start, start, end) for marker, start, end in jpeg_segments(data) if marker == 0xDA
    )
    return data[:end] + data[start:end] * repeats + data[end:]
