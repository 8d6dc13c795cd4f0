from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from eldefect.image_check import MAX_JPEG_SCANS
from eldefect.imaging import ImageDecodeError, ImageInfo, decode_gray, verify_image
from tests.eldefect.images import (
    encode,
    gradient,
    jpeg_repeating_a_scan,
    patch_tiff_tag,
    png16_rgb,
    png_header_only,
    premultiplied_la_tiff,
    tiled_tiff,
)
from tests.fresh_python import fresh_python

LIMIT = 10_000_000


def test_8bit_png_scales_to_unit_range() -> None:
    pixels = (gradient() * 255).round().astype(np.uint8)
    gray = decode_gray(encode(pixels, "PNG"), max_pixels=LIMIT)
    assert gray.dtype == np.float32 and gray.shape == (40, 60)
    np.testing.assert_allclose(gray, pixels / 255.0, atol=1e-6)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_keeps_its_dynamic_range(fmt: str) -> None:
    # Values that differ only below 8-bit resolution must stay distinct.
    pixels = np.array([[1000, 1001, 40000, 65535]], dtype=np.uint16)
    gray = decode_gray(encode(pixels, fmt), max_pixels=LIMIT)
    np.testing.assert_allclose(gray, pixels / 65535.0, rtol=1e-6)
    assert gray[0, 0] != gray[0, 1]


def test_16bit_rgb_png_keeps_its_full_depth() -> None:
    # Channels that differ only in their low byte: Pillow alone would make them all equal.
    rng = np.random.default_rng(3)
    samples = (0x4000 + rng.integers(0, 256, (10, 12, 3))).astype(np.uint16)
    gray = decode_gray(png16_rgb(samples), max_pixels=LIMIT)
    expected = (samples.astype(np.float32) / 65535.0) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(gray, expected, rtol=1e-5)
    assert len(np.unique(gray)) > 50
    info = verify_image(png16_rgb(samples), max_pixels=LIMIT)
    assert (info.format, info.width, info.height) == ("PNG", 12, 10)


def test_truncated_16bit_rgb_png_is_corrupt() -> None:
    data = png16_rgb(np.full((32, 32, 3), 1000, np.uint16))
    with pytest.raises(ImageDecodeError) as err:
        decode_gray(data[: len(data) - 20], max_pixels=LIMIT)
    assert err.value.code == "corrupt_image"


def test_jpeg_cut_inside_its_header_is_corrupt_not_a_crash() -> None:
    # Pillow raises OSError("Truncated File Read") from Image.open itself here.
    rng = np.random.default_rng(0)
    data = encode(rng.integers(0, 255, (64, 64), dtype=np.uint8), "JPEG")
    for decode in (decode_gray, verify_image):
        with pytest.raises(ImageDecodeError) as err:
            decode(data[:200], max_pixels=LIMIT)
        assert err.value.code == "corrupt_image"


def test_rgb_jpeg_becomes_luma() -> None:
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 200
    gray = decode_gray(encode(rgb, "JPEG", quality=100), max_pixels=LIMIT)
    assert gray.shape == (32, 32)
    assert abs(float(gray.mean()) - 0.299 * 200 / 255) < 0.02


def test_bmp_decodes() -> None:
    pixels = (gradient() * 255).astype(np.uint8)
    assert decode_gray(encode(pixels, "BMP"), max_pixels=LIMIT).shape == (40, 60)


def test_exif_orientation_is_applied() -> None:
    pixels = np.zeros((20, 50), np.uint8)  # wide image
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    assert decode_gray(buf.getvalue(), max_pixels=LIMIT).shape == (50, 20)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty_file"),
        (b"this is plain text, not an image", "unsupported_media_type"),
        (png_header_only(30000, 30000), "too_many_pixels"),
    ],
)
def test_refusals_name_the_reason(data: bytes, code: str) -> None:
    with pytest.raises(ImageDecodeError) as err:
        decode_gray(data, max_pixels=LIMIT)
    assert err.value.code == code
    assert err.value.message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_is_corrupt(fmt: str) -> None:
    rng = np.random.default_rng(0)
    data = encode(rng.integers(0, 255, (64, 64), dtype=np.uint8), fmt)
    with pytest.raises(ImageDecodeError) as err:
        decode_gray(data[: len(data) // 2], max_pixels=LIMIT)
    assert err.value.code == "corrupt_image"


def test_verify_refuses_what_decode_refuses_and_reports_the_size() -> None:
    pixels = (gradient() * 65535).astype(np.uint16)
    info = verify_image(encode(pixels, "PNG"), max_pixels=LIMIT)
    assert (info.format, info.width, info.height) == ("PNG", 60, 40)
    # The pixel limit is checked on the header, before any pixel data is read.
    with pytest.raises(ImageDecodeError, match="30000x30000"):
        verify_image(png_header_only(30000, 30000), max_pixels=LIMIT)
    data = encode(pixels, "PNG")
    with pytest.raises(ImageDecodeError) as err:
        verify_image(data[: len(data) // 2], max_pixels=LIMIT)
    assert err.value.code == "corrupt_image"
    nan = np.full((8, 8), np.nan, np.float32)
    with pytest.raises(ImageDecodeError, match="not finite"):
        verify_image(encode(nan, "TIFF"), max_pixels=LIMIT)


def test_gif_is_refused_as_unsupported() -> None:
    with pytest.raises(ImageDecodeError) as err:
        decode_gray(encode(np.zeros((8, 8), np.uint8), "GIF"), max_pixels=LIMIT)
    assert err.value.code == "unsupported_media_type"


def test_multi_frame_tiff_is_refused() -> None:
    frames = [Image.fromarray(np.zeros((8, 8), np.uint8)) for _ in range(2)]
    buf = io.BytesIO()
    frames[0].save(buf, format="TIFF", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageDecodeError, match="2 frames") as err:
        decode_gray(buf.getvalue(), max_pixels=LIMIT)
    assert err.value.code == "invalid_image"


def test_float_tiff_with_nan_is_refused() -> None:
    pixels = np.full((8, 8), 0.5, np.float32)
    pixels[0, 0] = np.nan
    with pytest.raises(ImageDecodeError, match="not finite") as err:
        decode_gray(encode(pixels, "TIFF"), max_pixels=LIMIT)
    assert err.value.code == "invalid_image"


def test_a_jpeg_decodes_no_larger_than_the_model_needs_and_looks_the_same() -> None:
    from eldefect.preprocess import resize

    pixels = (gradient(600, 800) * 255).astype(np.uint8)
    rgb = np.stack([pixels] * 3, axis=-1)  # as PV-Multi-Defect stores its strips
    data = encode(rgb, "JPEG", quality=95)
    full = decode_gray(data, max_pixels=LIMIT)
    reduced = decode_gray(data, max_pixels=LIMIT, min_side=224)
    assert full.shape == (600, 800) and reduced.shape == (300, 400)  # 1/2: 1/4 would be < 224
    assert decode_gray(data, max_pixels=LIMIT, min_side=64).shape == (75, 100)  # 1/8 at most
    # What the model sees after the resize barely changes.
    assert float((resize(full, 224) - resize(reduced, 224)).abs().max()) < 0.02


def test_min_side_leaves_other_formats_and_small_jpegs_at_full_size() -> None:
    pixels = (gradient(300, 300) * 255).astype(np.uint8)
    assert decode_gray(encode(pixels, "PNG"), max_pixels=LIMIT, min_side=64).shape == (300, 300)
    small = encode(pixels[:200, :200], "JPEG")
    assert decode_gray(small, max_pixels=LIMIT, min_side=224).shape == (200, 200)


def test_verify_checks_a_jpeg_at_reduced_size_but_reports_its_stored_size() -> None:
    rng = np.random.default_rng(0)
    data = encode(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), "JPEG")
    info = verify_image(data, max_pixels=LIMIT)
    assert (info.format, info.width, info.height, info.mode) == ("JPEG", 640, 480, "RGB")
    for cut in (len(data) // 3, len(data) - 64):  # a cut anywhere in the scan is still seen
        with pytest.raises(ImageDecodeError) as err:
            verify_image(data[:cut], max_pixels=LIMIT)
        assert err.value.code == "corrupt_image"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF"])
def test_verify_reports_the_upright_size_of_a_turned_image(fmt: str) -> None:
    img = Image.fromarray(np.zeros((20, 50), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buf = io.BytesIO()
    img.save(buf, format=fmt, exif=exif)
    info = verify_image(buf.getvalue(), max_pixels=LIMIT)
    assert (info.format, info.width, info.height, info.mode) == (fmt, 20, 50, "L")


def test_verify_decodes_a_png_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check runs on every upload: a second full decode for the EXIF doubled its cost."""
    from PIL import ImageFile

    loads = []
    real_load = ImageFile.ImageFile.load

    def counted(self: ImageFile.ImageFile) -> object:
        if self.tile:  # pixels still to decode (a load of a decoded image does nothing)
            loads.append(self.format)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counted)
    verify_image(encode(np.zeros((40, 60), np.uint8), "PNG"), max_pixels=LIMIT)
    assert loads == ["PNG"]


def test_image_check_registers_only_pillows_common_decoders_and_tiff() -> None:
    """Pillow's other ~40 plugins (AVIF and WebP libraries with them) stay unloaded."""
    code = (
        "import sys, eldefect.image_check\n"
        "print(' '.join(sorted(m[4:] for m in sys.modules if m.startswith('PIL.')"
        " and m.endswith('ImagePlugin'))))\n"
    )
    out = fresh_python(code)
    common = {"BmpImagePlugin", "GifImagePlugin", "JpegImagePlugin", "PngImagePlugin"}
    assert set(out.split()) == common | {"PpmImagePlugin", "TiffImagePlugin"}


def _count_loads(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """The formats of the images decoded from now on (a load with pixels still to decode)."""
    loads: list[str | None] = []
    real_load = ImageFile.ImageFile.load

    def counted(self: ImageFile.ImageFile) -> object:
        if self.tile:
            loads.append(self.format)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counted)
    return loads


def test_a_jpeg_of_thousands_of_scans_is_refused_before_any_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each scan is a pass over the whole image: ~58 KB of repeated scans took seconds."""
    bomb = jpeg_repeating_a_scan(2000, 2000, repeats=3000)
    assert len(bomb) < 60_000
    loads = _count_loads(monkeypatch)
    for check in (verify_image, decode_gray):
        with pytest.raises(
            ImageDecodeError, match=f"3006 scans; the limit is {MAX_JPEG_SCANS}"
        ) as err:
            check(bomb, max_pixels=LIMIT)
        assert err.value.code == "invalid_image"
    assert loads == []


@pytest.mark.parametrize("channels", [1, 3])
def test_progressive_jpegs_pass_the_scan_limit(channels: int) -> None:
    pixels = (gradient(64, 80) * 255).astype(np.uint8)
    data = encode(np.stack([pixels] * channels, axis=-1).squeeze(), "JPEG", progressive=True)
    assert 1 < data.count(b"\xff\xda") <= MAX_JPEG_SCANS
    info = verify_image(data, max_pixels=LIMIT)
    assert (info.format, info.width, info.height) == ("JPEG", 80, 64)
    assert decode_gray(data, max_pixels=LIMIT).shape == (64, 80)


def test_a_tiff_whose_tiles_dwarf_its_image_is_refused_before_any_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each decode allocates a whole tile: 64 MiB for a ~65 KB 16x16 TIFF of 8192x8192 tiles."""
    bomb = tiled_tiff(16, 16, 2048, 2048)  # 4 MiB a decode, from 4 KB
    loads = _count_loads(monkeypatch)
    for check in (verify_image, decode_gray):
        with pytest.raises(ImageDecodeError, match="tiles of 2048x2048 = 4194304 pixels") as err:
            check(bomb, max_pixels=LIMIT)
        assert err.value.code == "too_many_pixels"
    assert loads == []


def test_tiffs_in_tiles_of_the_usual_sizes_are_accepted_within_the_pixel_limit() -> None:
    info = verify_image(tiled_tiff(600, 400, 256, 256), max_pixels=LIMIT)
    assert info == ImageInfo(format="TIFF", width=600, height=400, mode="L")
    small = tiled_tiff(16, 16, 512, 512)  # one tile, larger than a small image: common enough
    assert decode_gray(small, max_pixels=LIMIT).shape == (16, 16)
    with pytest.raises(ImageDecodeError, match="the limit for a tile is 10000") as err:
        verify_image(small, max_pixels=10_000)
    assert err.value.code == "too_many_pixels"


def test_a_pixel_mode_the_worker_cannot_convert_is_refused_by_the_check() -> None:
    data = premultiplied_la_tiff()
    assert Image.open(io.BytesIO(data)).mode == "La"
    for check in (verify_image, decode_gray):
        with pytest.raises(ImageDecodeError, match="pixel mode 'La'") as err:
            check(data, max_pixels=LIMIT)
        assert err.value.code == "unsupported_media_type"


def _zero_width(variant: str) -> bytes:
    fmt = variant.split()[0]
    data = bytearray(encode(np.zeros((6, 8), np.uint8), fmt))
    if fmt == "PNG":
        data[16:20] = bytes(4)  # IHDR width
        if variant == "PNG checksum fixed":
            data[29:33] = struct.pack(">I", zlib.crc32(data[12:29]))
    elif fmt == "BMP":
        data[18:22] = bytes(4)  # BITMAPINFOHEADER width
    elif fmt == "JPEG":
        sof = data.index(b"\xff\xc0")
        data[sof + 7 : sof + 9] = bytes(2)  # SOF0 width
    else:
        return patch_tiff_tag(bytes(data), 256, 0)  # ImageWidth
    return bytes(data)


@pytest.mark.parametrize(
    "variant", ["PNG checksum fixed", "PNG checksum stale", "BMP", "JPEG", "TIFF"]
)
def test_a_header_of_zero_width_is_a_corrupt_image_not_another_format(variant: str) -> None:
    # Pillow cannot identify these, as it cannot a GIF; the first bytes say they are ours.
    for check in (verify_image, decode_gray):
        with pytest.raises(ImageDecodeError, match="header cannot be read") as err:
            check(_zero_width(variant), max_pixels=LIMIT)
        assert err.value.code == "corrupt_image"
        assert variant.split()[0] in err.value.message
