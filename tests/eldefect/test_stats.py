from __future__ import annotations

import numpy as np
import pytest

from eldefect.stats import FEATURES, feature_profile, input_statistics


def test_statistics_of_a_known_image() -> None:
    gray = np.linspace(0, 1, 101, dtype=np.float32).reshape(1, 101)
    stats = input_statistics(gray)
    assert set(stats) == set(FEATURES)
    assert stats["mean"] == pytest.approx(0.5, abs=1e-6)
    assert stats["p10"] == pytest.approx(0.1, abs=1e-6)
    assert stats["p50"] == pytest.approx(0.5, abs=1e-6)
    assert stats["p90"] == pytest.approx(0.9, abs=1e-6)
    assert stats["std"] == pytest.approx(float(gray.std()), rel=1e-6)


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
