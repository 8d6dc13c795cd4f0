"""Opening and checking untrusted image bytes with Pillow alone.

The gateway's upload check (`verify_image`) and the first step of every decode
(eldefect.imaging, which adds numpy for the float conversion). Kept apart so that the
gateway, which only checks, never imports numpy: a float TIFF, the one check that needs
pixel values, imports it when one arrives. The bytes are untrusted: every failure of a
decoder becomes an `ImageDecodeError` with a stable code, never another exception.
"""

from __future__ import annotations

import functools
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
# The pixel modes eldefect.imaging reads as numbers; it converts every other mode to RGB first.
UINT16_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
READ_AS_IS = frozenset({*UINT16_MODES, "I", "F", "L", "RGB"})
# A progressive JPEG is decoded scan by scan, each a pass over the whole image, so its cost grows
# with its scan count, which nothing in the format bounds: a tiny scan repeated 3000 times makes
# a 58 KB file that takes seconds (a 20 MB one, an hour). Encoders write about 10 (libjpeg's
# progressive script: 6 for gray, 10 for colour); 100 leaves room for any real one.
MAX_JPEG_SCANS = 100
_JPEG_SOS = b"\xff\xda"
# A tile is decoded into a buffer of its own size, whatever the image's: a 16x16 TIFF declaring
# 8192x8192 tiles compresses to ~65 KB and makes every decode allocate 64 MiB. A tile may hold
# as many pixels as the image itself, or a 1024x1024 tile's worth for a small image (tools write
# 256 or 512 square tiles), and never more than the pixel limit. Strips need no such rule:
# libtiff clamps RowsPerStrip to the image's height.
_TIFF_TILE_WIDTH, _TIFF_TILE_LENGTH = 322, 323
_SMALL_IMAGE_TILE_PIXELS = 1024 * 1024


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


def _unidentified(data: bytes) -> ImageDecodeError:
    """Pillow could not open the bytes: another format, or one of ours with a broken header.

    Pillow answers "cannot identify" both for a GIF and for a PNG whose header it rejects (a
    width of 0, a bad checksum); the file's first bytes tell which, by each format's own test.
    """
    prefix = data[:16]  # as much as Pillow's tests read
    for fmt in SUPPORTED_FORMATS:
        accept = Image.OPEN[fmt][1]
        if accept is not None and accept(prefix):
            return ImageDecodeError(
                "corrupt_image",
                f"the file starts as a {fmt} image but its header cannot be read "
                "(a width or height of 0, or a damaged header)",
            )
    return _unsupported()


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
        raise _unidentified(data) from None
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
    if not readable_mode(img.mode):
        raise ImageDecodeError(
            "unsupported_media_type",
            f"the image's pixel mode {img.mode!r} cannot be converted to grayscale; "
            "send a grayscale or RGB image",
        )
    if img.format == "TIFF":
        _check_tiles(img, max_pixels)
    elif img.format in ("JPEG", "MPO"):
        _check_scans(data)
    return img


@functools.cache
def readable_mode(mode: str) -> bool:
    """Whether eldefect.imaging can make gray pixels of this mode.

    It reads some as they are and converts the rest to RGB, which Pillow cannot do for every
    mode it opens: a TIFF with premultiplied alpha opens as "La", which has no conversion.
    The test depends on the mode alone, so it runs once, on a 1x1 image, before any decoding.
    """
    if mode in READ_AS_IS:
        return True
    try:
        Image.new(mode, (1, 1)).convert("RGB")
    except (ValueError, TypeError):  # no such conversion, or no such mode to make one of
        return False
    return True


def _check_tiles(img: ImageFile.ImageFile, max_pixels: int) -> None:
    """Refuse tiles far larger than the image they make up (see _SMALL_IMAGE_TILE_PIXELS)."""
    tags = getattr(img, "tag_v2", {})
    tile_width, tile_length = tags.get(_TIFF_TILE_WIDTH), tags.get(_TIFF_TILE_LENGTH)
    if not isinstance(tile_width, int) or not isinstance(tile_length, int):
        return  # a striped TIFF (or a tag Pillow would not read either)
    width, height = img.size
    limit = min(max_pixels, max(width * height, _SMALL_IMAGE_TILE_PIXELS))
    if tile_width * tile_length > limit:
        raise ImageDecodeError(
            "too_many_pixels",
            f"the {width}x{height} TIFF is stored in tiles of {tile_width}x{tile_length} = "
            f"{tile_width * tile_length} pixels each; the limit for a tile is {limit}",
        )


def _check_scans(data: bytes) -> None:
    """Refuse a JPEG of more than MAX_JPEG_SCANS scans before decoding any.

    Every scan starts with an SOS marker (FF DA). Entropy-coded data cannot hold one (an FF
    there is followed by 00 or a restart marker), so counting them counts every scan, plus any
    that metadata or an embedded thumbnail happen to hold: an upper bound, never an undercount.
    """
    scans = data.count(_JPEG_SOS)
    if scans > MAX_JPEG_SCANS:
        raise ImageDecodeError(
            "invalid_image",
            f"the JPEG holds {scans} scans; the limit is {MAX_JPEG_SCANS} "
            "(a progressive JPEG has about 10)",
        )


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
