from __future__ import annotations

import numpy as np
import pytest

from eldefect.stats import FEATURES, feature_profile, input_statistics, texture


def test_statistics_of_a_known_image() -> None:
    gray = np.linspace(0, 1, 101, dtype=np.float32).reshape(1, 101)
    stats = input_statistics(gray)
    assert set(stats) == set(FEATURES)
    assert stats["mean"] == pytest.approx(0.5, abs=1e-6)
    # Percentiles come from a 4096-level histogram: within half a level of the exact value.
    assert stats["p10"] == pytest.approx(0.1, abs=1.5e-4)
    assert stats["p50"] == pytest.approx(0.5, abs=1.5e-4)
    assert stats["p90"] == pytest.approx(0.9, abs=1.5e-4)
    assert stats["std"] == pytest.approx(float(gray.std()), rel=1e-6)


def test_percentiles_of_an_8_bit_image_match_a_sort_to_a_level() -> None:
    rng = np.random.default_rng(1)
    gray = (rng.integers(0, 256, (300, 300)) / 255).astype(np.float32)  # 256 levels, as a JPEG
    stats = input_statistics(gray)
    for name, q in (("p10", 10), ("p50", 50), ("p90", 90)):
        assert stats[name] == pytest.approx(float(np.percentile(gray, q)), abs=1 / 255)


def test_large_images_are_subsampled_closely() -> None:
    rng = np.random.default_rng(0)
    gray = rng.random((2000, 1500), dtype=np.float32)
    stats = input_statistics(gray)
    assert stats["p90"] == pytest.approx(float(np.percentile(gray, 90)), abs=5e-3)


def test_profile_is_mean_and_std_per_feature() -> None:
    rows = [dict.fromkeys(FEATURES, v) for v in (0.2, 0.4)]
    profile = feature_profile(rows)
    assert profile["mean"] == {"mean": pytest.approx(0.3), "std": pytest.approx(0.1)}
    with pytest.raises(ValueError, match="zero images"):
        feature_profile([])


def test_texture_is_zero_on_a_flat_image_and_does_not_depend_on_resolution() -> None:
    assert texture(np.full((300, 300), 0.7, np.float32)) == pytest.approx(0.0, abs=1e-6)
    rng = np.random.default_rng(0)
    cells = rng.random((32, 32)).astype(np.float32)  # a grain pattern coarser than the grid
    small = np.kron(cells, np.ones((8, 8), np.float32))  # 256 px
    large = np.kron(cells, np.ones((32, 32), np.float32))  # 1024 px, the same picture
    assert texture(small) > 0.05
    assert texture(large) == pytest.approx(texture(small), rel=0.05)
    smooth = np.linspace(0, 1, 256, dtype=np.float32)[None, :].repeat(256, 0)
    assert texture(smooth) < texture(small) / 10, "a ramp has almost no texture"
