"""Opening and checking untrusted image bytes with Pillow alone.

The gateway's upload check (`verify_image`) and the first step of every decode
(eldefect.imaging, which adds numpy for the float conversion). Kept apart so that the
gateway, which only checks, never imports numpy: a float TIFF, the one check that needs
pixel values, imports it when one arrives. The bytes are untrusted: every failure of a
decoder becomes an `ImageDecodeError` with a stable code, never another exception.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import (
    Image,
    ImageFile,
    ImageOps,
    TiffImagePlugin,  # noqa: F401 (registers the TIFF decoder)
    UnidentifiedImageError,
)

if TYPE_CHECKING:
    import numpy as np

SUPPORTED_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")
# Our pixel limit (settings.max_image_pixels) is checked on the header before any decoding,
# with a message that names the size; Pillow's own global guard would pre-empt it.
Image.MAX_IMAGE_PIXELS = None
# Pillow has no 16-bit RGB mode: it unpacks a 16-bit RGB(A) PNG to 8 bits per channel (the
# high byte of each big-endian sample). Running the same PNG decoder again with the
# little-endian unpacker picks the other byte, so high << 8 | low is the full sample.
PNG_LOW_BYTES = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L"}


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


# Only our formats' decoders are registered: preinit() has PNG, JPEG and BMP, the import
# above adds TIFF. With every name in `formats=` registered, Image.open never calls
# Image.init(), which loads all of Pillow's ~45 plugins (the AVIF and WebP libraries too,
# ~3 MiB per process) for decoders that never look at an upload.
Image.preinit()
assert set(SUPPORTED_FORMATS) <= Image.OPEN.keys(), "a supported format has no decoder"


def _unsupported() -> ImageDecodeError:
    return ImageDecodeError(
        "unsupported_media_type",
        f"the file is not an image in a supported format ({', '.join(SUPPORTED_FORMATS)})",
    )


def corrupt(exc: BaseException) -> ImageDecodeError:
    reason = str(exc).strip() or type(exc).__name__
    return ImageDecodeError("corrupt_image", f"the image data cannot be decoded: {reason}")


def open_image(data: bytes, max_pixels: int) -> ImageFile.ImageFile:
    if not data:
        raise ImageDecodeError("empty_file", "the upload is empty (0 bytes)")
    try:
        # Only our formats' decoders ever look at untrusted bytes.
        img = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
        frames = int(getattr(img, "n_frames", 1))
    except UnidentifiedImageError:
        raise _unsupported() from None
    except Exception as exc:  # a header cut short or garbled (OSError, SyntaxError, ...)
        raise corrupt(exc) from None
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


def reduce_jpeg(img: ImageFile.ImageFile, min_side: int) -> None:
    """Let the JPEG decoder scale by 1/2, 1/4 or 1/8 while both sides stay >= `min_side`.

    The scaling happens in the DCT, so decoding costs a fraction of a full decode and every
    step after it (statistics, resize) works on fewer pixels. An RGB JPEG is decoded to its
    luma plane (Y is 0.299 R + 0.587 G + 0.114 B, the weights eldefect.imaging uses),
    skipping the colour conversion. Every entropy-coded byte is still read, so a truncated
    or corrupt file fails as it does at full size.
    """
    width, height = img.size
    mode = "L" if img.mode == "RGB" else img.mode
    img.draft(mode, (min(min_side, width), min(min_side, height)))


def load_image(
    data: bytes, max_pixels: int, *, low_bytes: bool = False, min_side: int | None = None
) -> tuple[Image.Image, str]:
    """Open, check and decode (native pixel mode), upright per EXIF orientation.

    Returns the image and its format name (the upright copy no longer carries it). With
    `low_bytes`, a 16-bit RGB(A) PNG is decoded to the low bytes of its samples instead.
    With `min_side`, a JPEG may be decoded at a reduced size (`reduce_jpeg`).
    """
    img = open_image(data, max_pixels)
    # Pillow names a JPEG with a multi-picture (MPF) segment, as cameras write, "MPO".
    fmt = "JPEG" if img.format == "MPO" else str(img.format)
    try:
        if low_bytes:
            img.tile = [tile._replace(args=PNG_LOW_BYTES[str(tile.args)]) for tile in img.tile]
        if min_side is not None and fmt == "JPEG":
            reduce_jpeg(img, min_side)
        img.load()
        return ImageOps.exif_transpose(img), fmt
    except Exception as exc:  # untrusted bytes: any decoder failure is the image's fault
        raise corrupt(exc) from None


def check_finite(pixels: np.ndarray | Image.Image) -> None:
    """Refuse NaN or Inf pixels (float TIFFs can carry them).

    numpy is imported here, not at the top: the gateway only gets here with a float TIFF."""
    import numpy as np

    if not np.isfinite(np.asarray(pixels)).all():
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
    img, fmt = load_image(data, max_pixels, min_side=_VERIFY_JPEG_SIDE)
    if img.mode == "F":  # float TIFFs alone need the pixel values checked
        check_finite(img)
    if fmt != "JPEG":  # decoded at full size, upright: its own size and mode are the answer
        return ImageInfo(format=fmt, width=img.width, height=img.height, mode=img.mode)
    # A JPEG was decoded reduced (and to luma): size and mode as stored come from its header,
    # which costs nothing more to read (a PNG's EXIF would cost a second full decode).
    header = open_image(data, max_pixels)
    # EXIF orientations 5..8 turn the image a quarter: its upright sides swap.
    quarter_turn = header.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8)
    width, height = header.size[::-1] if quarter_turn else header.size
    return ImageInfo(format=fmt, width=width, height=height, mode=header.mode)
