"""Decoding EL images into one representation: a float32 grayscale array on a 0..1 scale.

Pure PIL + numpy (no torch): the bytes are opened and checked by eldefect.image_check, the
same code the gateway validates uploads with, and converted here. 16-bit grayscale images
keep their dynamic range: they are scaled by their bit depth, never squeezed through 8 bits,
and so are 16-bit RGB PNGs (`image_check.PNG_LOW_BYTES`). 16-bit RGB TIFFs are the exception:
Pillow reads them as 8 bits per channel, and so does this (EL cameras write grayscale; an RGB
EL file is three equal channels). Every failure of a decoder becomes an
`ImageDecodeError` with a stable code, never another exception.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from eldefect.image_check import (
    PNG_LOW_BYTES,
    READ_AS_IS,
    SUPPORTED_FORMATS,
    UINT16_MODES,
    ImageDecodeError,
    ImageInfo,
    check_finite,
    corrupt,
    load_image,
    open_image,
    verify_image,
)

# Callers import the check's names from here too: one place to import image handling from.
__all__ = [
    "SUPPORTED_FORMATS",
    "ImageDecodeError",
    "ImageInfo",
    "decode_gray",
    "verify_image",
]

# ITU-R BT.601 luma; EL cameras are monochrome, RGB files are usually three equal channels.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _to_unit_gray(img: Image.Image) -> np.ndarray:
    if img.mode not in READ_AS_IS:
        # Palette, RGBA, CMYK, 1-bit, LA...: the check refused the modes with no conversion
        # (image_check.readable_mode), so the gateway never accepts what fails here.
        img = img.convert("RGB")
    mode = img.mode
    if mode in UINT16_MODES:
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
    rgb = np.asarray(img, dtype=np.float32) / 255.0
    return rgb @ _LUMA


def _is_deep_png(data: bytes, max_pixels: int) -> bool:
    """A 16-bit RGB(A) PNG, which Pillow alone would squeeze to 8 bits per channel."""
    img = open_image(data, max_pixels)
    return img.format == "PNG" and all(tile.args in PNG_LOW_BYTES for tile in img.tile)


def _deep_png_rgb(data: bytes, max_pixels: int) -> np.ndarray:
    """The (H, W, 3) samples of a 16-bit RGB(A) PNG on a 0..1 scale, at full depth."""
    high, _fmt = load_image(data, max_pixels)
    low, _fmt = load_image(data, max_pixels, low_bytes=True)
    samples = np.asarray(high, dtype=np.uint16)[..., :3] << 8  # (H, W, 3)
    samples |= np.asarray(low, dtype=np.uint16)[..., :3]
    return samples.astype(np.float32) / 65535.0


def decode_gray(data: bytes, *, max_pixels: int, min_side: int | None = None) -> np.ndarray:
    """Decode image bytes to an (H, W) float32 array in 0..1, upright per EXIF orientation.

    `min_side`: the model's input size, when the image only goes on to be resized to it. A
    JPEG is then decoded at the smallest reduced scale whose sides both stay >= `min_side`
    (`image_check.reduce_jpeg`); other formats decode in full. Training
    (eldefect.data.cache) and serving (the worker) both pass the model's input size, so the
    model sees the same pixels in both.
    """
    if _is_deep_png(data, max_pixels):
        gray = _deep_png_rgb(data, max_pixels) @ _LUMA
    else:
        img, _format = load_image(data, max_pixels, min_side=min_side)
        try:
            gray = _to_unit_gray(img)
        except Exception as exc:  # untrusted bytes: any conversion failure is the image's
            raise corrupt(exc) from None
    check_finite(gray)
    return np.ascontiguousarray(gray, dtype=np.float32)
