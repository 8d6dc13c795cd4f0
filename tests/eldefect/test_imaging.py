from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from eldefect.imaging import ImageDecodeError, decode_gray, verify_image
from tests.eldefect.images import encode, gradient, png16_rgb, png_header_only
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
