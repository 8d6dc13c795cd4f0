"""Decoding EL images into one representation: a float32 grayscale array on a 0..1 scale.

Pure PIL + numpy (no torch), so the gateway can validate uploads with the same code the
worker decodes them with. 16-bit images keep their dynamic range: they are scaled by their
bit depth, never squeezed through 8 bits (16-bit RGB PNGs included, see `_PNG_LOW_BYTES`).
The bytes are untrusted: every failure of a decoder becomes an `ImageDecodeError` with a
stable code, never another exception.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

SUPPORTED_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")
# Our pixel limit (settings.max_image_pixels) is checked on the header before any decoding,
# with a message that names the size; Pillow's own global guard would pre-empt it.
Image.MAX_IMAGE_PIXELS = None
# ITU-R BT.601 luma; EL cameras are monochrome, RGB files are usually three equal channels.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# Pillow has no 16-bit RGB mode: it unpacks a 16-bit RGB(A) PNG to 8 bits per channel (the
# high byte of each big-endian sample). Running the same PNG decoder again with the
# little-endian unpacker picks the other byte, so high << 8 | low is the full sample.
_PNG_LOW_BYTES = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L"}


class ImageDecodeError(ValueError):
    """The bytes are not a supported, intact image. `code` is a stable snake_case reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int
    mode: str


Image.init()  # register every decoder plugin, so `formats=` can name TIFF


def _unsupported() -> ImageDecodeError:
    return ImageDecodeError(
        "unsupported_media_type",
        f"the file is not an image in a supported format ({', '.join(SUPPORTED_FORMATS)})",
    )


def _corrupt(exc: BaseException) -> ImageDecodeError:
    reason = str(exc).strip() or type(exc).__name__
    return ImageDecodeError("corrupt_image", f"the image data cannot be decoded: {reason}")


def _open(data: bytes, max_pixels: int) -> ImageFile.ImageFile:
    if not data:
        raise ImageDecodeError("empty_file", "the upload is empty (0 bytes)")
    try:
        # Only our formats' decoders ever look at untrusted bytes.
        img = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
        frames = int(getattr(img, "n_frames", 1))
    except UnidentifiedImageError:
        raise _unsupported() from None
    except Exception as exc:  # a header cut short or garbled (OSError, SyntaxError, ...)
        raise _corrupt(exc) from None
    # An MPO (a camera JPEG with a multi-picture segment): its first frame is the photograph.
    if frames > 1 and img.format != "MPO":
        raise ImageDecodeError(
            "invalid_image", f"the {img.format} file holds {frames} frames; send one image per file"
        )
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageDecodeError("invalid_image", f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageDecodeError(
            "too_many_pixels",
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
        )
    return img


def _to_unit_gray(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(img, dtype=np.float32) / 65535.0
    if mode == "I":
        # Pillow opens some 16-bit files as 32-bit "I"; values tell which depth was stored.
        arr = np.asarray(img, dtype=np.float64)
        depth_max = 65535.0 if arr.max(initial=0) <= 65535 else float(2**32 - 1)
        return (np.clip(arr, 0, None) / depth_max).astype(np.float32)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        peak = float(arr.max(initial=0.0))
        return np.clip(arr / peak if peak > 1.0 else arr, 0.0, 1.0)
    if mode == "L":
        return np.asarray(img, dtype=np.float32) / 255.0
    if mode != "RGB":
        img = img.convert("RGB")  # palette, RGBA, CMYK, 1-bit, LA...
    rgb = np.asarray(img, dtype=np.float32) / 255.0
    return rgb @ _LUMA


def _reduce_jpeg(img: ImageFile.ImageFile, min_side: int) -> None:
    """Let the JPEG decoder scale by 1/2, 1/4 or 1/8 while both sides stay >= `min_side`.

    The scaling happens in the DCT, so decoding costs a fraction of a full decode and every
    step after it (statistics, resize) works on fewer pixels. An RGB JPEG is decoded to its
    luma plane (Y is 0.299 R + 0.587 G + 0.114 B, the weights of `_LUMA`), skipping the
    colour conversion. Every entropy-coded byte is still read, so a truncated or corrupt
    file fails as it does at full size.
    """
    width, height = img.size
    mode = "L" if img.mode == "RGB" else img.mode
    img.draft(mode, (min(min_side, width), min(min_side, height)))


def _load(
    data: bytes, max_pixels: int, *, low_bytes: bool = False, min_side: int | None = None
) -> tuple[Image.Image, str]:
    """Open, check and decode (native pixel mode), upright per EXIF orientation.

    Returns the image and its format name (the upright copy no longer carries it). With
    `low_bytes`, a 16-bit RGB(A) PNG is decoded to the low bytes of its samples instead.
    With `min_side`, a JPEG may be decoded at a reduced size (`_reduce_jpeg`).
    """
    img = _open(data, max_pixels)
    # Pillow names a JPEG with a multi-picture (MPF) segment, as cameras write, "MPO".
    fmt = "JPEG" if img.format == "MPO" else str(img.format)
    try:
        if low_bytes:
            img.tile = [tile._replace(args=_PNG_LOW_BYTES[str(tile.args)]) for tile in img.tile]
        if min_side is not None and fmt == "JPEG":
            _reduce_jpeg(img, min_side)
        img.load()
        return ImageOps.exif_transpose(img), fmt
    except Exception as exc:  # untrusted bytes: any decoder failure is the image's fault
        raise _corrupt(exc) from None


def _is_deep_png(data: bytes, max_pixels: int) -> bool:
    """A 16-bit RGB(A) PNG, which Pillow alone would squeeze to 8 bits per channel."""
    img = _open(data, max_pixels)
    return img.format == "PNG" and all(tile.args in _PNG_LOW_BYTES for tile in img.tile)


def _deep_png_rgb(data: bytes, max_pixels: int) -> np.ndarray:
    """The (H, W, 3) samples of a 16-bit RGB(A) PNG on a 0..1 scale, at full depth."""
    high, _fmt = _load(data, max_pixels)
    low, _fmt = _load(data, max_pixels, low_bytes=True)
    samples = np.asarray(high, dtype=np.uint16)[..., :3] << 8  # (H, W, 3)
    samples |= np.asarray(low, dtype=np.uint16)[..., :3]
    return samples.astype(np.float32) / 65535.0


def _check_finite(pixels: np.ndarray) -> None:
    if not np.isfinite(pixels).all():  # float TIFFs can carry NaN or Inf
        raise ImageDecodeError("invalid_image", "the image has pixels that are not finite numbers")


# The gateway's check decodes a JPEG at 1/8 scale: every byte is still entropy-decoded (a
# truncated or corrupt file fails), at a fraction of a full decode's cost.
_VERIFY_JPEG_SIDE = 1
_EXIF_ORIENTATION = 0x0112


def verify_image(data: bytes, *, max_pixels: int) -> ImageInfo:
    """What `decode_gray` would refuse, refused, without its float conversion.

    The gateway's check: a truncated file fails here, and memory stays at the native pixel
    size (a quarter of a float32 RGB copy). The info describes the file as stored (size,
    mode), whatever scale a JPEG was checked at.
    """
    img, fmt = _load(data, max_pixels, min_side=_VERIFY_JPEG_SIDE)
    header = _open(data, max_pixels)  # sizes as stored; its EXIF parsed in _load already
    # EXIF orientations 5..8 turn the image a quarter: its upright sides swap.
    quarter_turn = header.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8)
    width, height = header.size[::-1] if quarter_turn else header.size
    if img.mode == "F":
        _check_finite(np.asarray(img))
    return ImageInfo(format=fmt, width=width, height=height, mode=header.mode)


def decode_gray(data: bytes, *, max_pixels: int, min_side: int | None = None) -> np.ndarray:
    """Decode image bytes to an (H, W) float32 array in 0..1, upright per EXIF orientation.

    `min_side`: the model's input size, when the image only goes on to be resized to it. A
    JPEG is then decoded at the smallest reduced scale whose sides both stay >= `min_side`
    (`_reduce_jpeg`); other formats decode in full. Training (eldefect.data.cache) and serving
    (the worker) both pass the model's input size, so the model sees the same pixels in both.
    """
    if _is_deep_png(data, max_pixels):
        gray = _deep_png_rgb(data, max_pixels) @ _LUMA
    else:
        img, _format = _load(data, max_pixels, min_side=min_side)
        try:
            gray = _to_unit_gray(img)
        except Exception as exc:  # a pixel mode with no conversion to RGB (LAB, HSV, ...)
            raise _corrupt(exc) from None
    _check_finite(gray)
    return np.ascontiguousarray(gray, dtype=np.float32)
