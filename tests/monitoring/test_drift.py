"""The drift statistics on constructed windows whose z and effect are known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from db.models import DriftVerdict
from monitoring.drift import (
    Kind,
    Thresholds,
    Verdict,
    feature_measures,
    measure_drift,
    rate_measures,
)

REFERENCE = {"mean": {"mean": 0.5, "std": 0.1}}
LOOSE = Thresholds(min_n=10, z=3.0, effect=0.5, rate_z=3.0, rate_effect=0.2)


def window_with_mean(value: float, n: int) -> np.ndarray:
    """(n, 1) values whose mean is exactly `value` (a symmetric spread around it)."""
    spread = np.where(np.arange(n) % 2 == 0, 0.05, -0.05)
    return (value + spread)[:, None] if n % 2 == 0 else np.full((n, 1), value)


def test_feature_z_and_effect_match_the_formula() -> None:
    # m = 0.52, mu = 0.5, sigma = 0.1, n = 100: d = 0.2, z = 0.02 / (0.1 / 10) = 2.
    [m] = feature_measures(
        window_with_mean(0.52, 100), ["mean"], REFERENCE, z_threshold=3, effect_threshold=0.5
    )
    assert m.kind is Kind.feature
    assert m.window_value == pytest.approx(0.52)
    assert m.reference_value == 0.5
    assert m.effect == pytest.approx(0.2)
    assert m.z == pytest.approx(2.0)
    assert not m.drifted


def test_a_feature_drifts_only_when_z_and_effect_both_pass() -> None:
    def drifted(mean: float, n: int) -> bool:
        [m] = feature_measures(
            window_with_mean(mean, n), ["mean"], REFERENCE, z_threshold=3, effect_threshold=0.5
        )
        return m.drifted

    # Large window, trivial shift: z = 0.01/(0.1/100) = 10 passes, d = 0.1 does not.
    assert not drifted(0.51, 10_000)
    # Tiny window, large shift: d = 1 passes, z = 1 * sqrt(4) = 2 does not.
    assert not drifted(0.6, 4)
    # Both: d = 1, z = 10.
    assert drifted(0.6, 100)
    # Downward shifts count the same.
    assert drifted(0.4, 100)


def test_a_constant_reference_feature_does_not_divide_by_zero() -> None:
    reference = {"mean": {"mean": 0.5, "std": 0.0}}
    [same] = feature_measures(
        np.full((50, 1), 0.5), ["mean"], reference, z_threshold=3, effect_threshold=0.5
    )
    assert same.z == 0.0 and same.effect == 0.0 and not same.drifted
    [moved] = feature_measures(
        np.full((50, 1), 0.6), ["mean"], reference, z_threshold=3, effect_threshold=0.5
    )
    assert math.isfinite(moved.z) and math.isfinite(moved.effect)
    assert moved.drifted


def test_rate_z_and_cohens_h_match_the_formula() -> None:
    # p = 0.3 (30 of 100), p0 = 0.2: z = 0.1 / sqrt(0.16 / 100) = 2.5,
    # h = 2 asin(sqrt .3) - 2 asin(sqrt .2).
    positives = np.zeros((100, 1), bool)
    positives[:30] = True
    [m] = rate_measures(positives, ["crack"], {"crack": 0.2}, z_threshold=2, effect_threshold=0.2)
    assert m.kind is Kind.rate
    assert m.window_value == pytest.approx(0.3)
    assert m.z == pytest.approx(2.5)
    assert m.effect == pytest.approx(2 * math.asin(math.sqrt(0.3)) - 2 * math.asin(math.sqrt(0.2)))
    assert m.effect == pytest.approx(0.2319, abs=1e-4)
    assert m.drifted
    [strict] = rate_measures(
        positives, ["crack"], {"crack": 0.2}, z_threshold=3, effect_threshold=0.2
    )
    assert not strict.drifted, "z = 2.5 does not reach 3"


@pytest.mark.parametrize("p0", [0.0, 1.0])
def test_reference_rates_of_zero_or_one_stay_finite(p0: float) -> None:
    unchanged = np.full((200, 1), p0 == 1.0)
    [same] = rate_measures(unchanged, ["c"], {"c": p0}, z_threshold=4, effect_threshold=0.2)
    assert same.z == 0.0 and same.effect == 0.0 and not same.drifted
    flipped = unchanged.copy()
    flipped[:40] = not flipped[0, 0]  # 20% of the window departs from the certain reference
    [moved] = rate_measures(flipped, ["c"], {"c": p0}, z_threshold=4, effect_threshold=0.2)
    assert math.isfinite(moved.z) and abs(moved.z) > 4
    assert abs(moved.effect) == pytest.approx(2 * math.asin(math.sqrt(0.2)))
    assert moved.drifted


def test_a_window_below_min_n_is_insufficient_and_never_alarms() -> None:
    far = window_with_mean(0.9, 9)  # d = 4, z = 12: would drift with enough images
    result = measure_drift(
        features=far,
        feature_names=["mean"],
        feature_reference=REFERENCE,
        positives=None,
        classes=[],
        reference_rates=None,
        thresholds=LOOSE,  # min_n = 10
    )
    assert result.verdict is Verdict.insufficient_data
    assert result.n == 9 and result.measures[0].effect == pytest.approx(4.0)
    assert result.drifted == []
    enough = measure_drift(
        features=window_with_mean(0.9, 10),
        feature_names=["mean"],
        feature_reference=REFERENCE,
        positives=None,
        classes=[],
        reference_rates=None,
        thresholds=LOOSE,
    )
    assert enough.verdict is Verdict.drift


def test_an_empty_window_is_insufficient_with_no_measures() -> None:
    result = measure_drift(
        features=np.zeros((0, 1)),
        feature_names=["mean"],
        feature_reference=REFERENCE,
        positives=np.zeros((0, 1), bool),
        classes=["crack"],
        reference_rates={"crack": 0.1},
        thresholds=LOOSE,
    )
    assert result.verdict is Verdict.insufficient_data and result.measures == []


def test_prediction_drift_alone_makes_the_verdict_drift() -> None:
    positives = np.zeros((100, 2), bool)
    positives[:50, 1] = True  # finger: 50% against 10%
    result = measure_drift(
        features=window_with_mean(0.5, 100),
        feature_names=["mean"],
        feature_reference=REFERENCE,
        positives=positives,
        classes=["crack", "finger"],
        reference_rates={"crack": 0.0, "finger": 0.1},
        thresholds=LOOSE,
    )
    assert result.verdict is Verdict.drift
    assert [(m.kind, m.name) for m in result.drifted] == [(Kind.rate, "finger")]
    calm = measure_drift(
        features=window_with_mean(0.5, 100),
        feature_names=["mean"],
        feature_reference=REFERENCE,
        positives=positives,
        classes=["crack", "finger"],
        reference_rates=None,  # an old profile: input drift only
        thresholds=LOOSE,
    )
    assert calm.verdict is Verdict.ok and all(m.kind is Kind.feature for m in calm.measures)


def test_verdicts_are_the_values_the_database_stores() -> None:
    assert {v.value for v in Verdict} == {v.value for v in DriftVerdict}


def test_one_grey_level_on_a_constant_feature_is_not_drift_but_a_real_shift_is() -> None:
    # p10 of cells with dark borders: 0 in every training image (mean 0, std 0).
    reference = {"p10": {"mean": 0.0, "std": 0.0}}
    default = Thresholds(min_n=50, z=4.0, effect=0.5, rate_z=4.0, rate_effect=0.3)

    def judge(window: np.ndarray) -> tuple[Verdict, float, float]:
        result = measure_drift(
            features=window,
            feature_names=["p10"],
            feature_reference=reference,
            positives=None,
            classes=[],
            reference_rates=None,
            thresholds=default,
        )
        [m] = result.measures
        return result.verdict, m.z, m.effect

    one_image = np.zeros((200, 1))
    one_image[0] = 1 / 255  # quantisation: one image one grey level up
    verdict, z, effect = judge(one_image)
    assert verdict is Verdict.ok, f"z = {z:.0f}, d = {effect:.1f}"
    # Floored at one grey level: d = 1/200, z = d sqrt(200) (it was z ~ 277 at 1e-6).
    assert effect == pytest.approx(1 / 200) and z == pytest.approx(math.sqrt(200) / 200)

    shifted, z, effect = judge(np.full((200, 1), 0.1))  # every image: p10 = 0.1
    assert shifted is Verdict.drift
    assert effect == pytest.approx(25.5) and z == pytest.approx(25.5 * math.sqrt(200))


def test_a_spread_above_the_floor_keeps_the_formula() -> None:
    # sigma = 2 grey levels, above the floor: d and z are the plain formula with that sigma.
    sigma = 2 / 255
    [m] = feature_measures(
        np.full((100, 1), 0.5 + sigma),
        ["mean"],
        {"mean": {"mean": 0.5, "std": sigma}},
        z_threshold=4,
        effect_threshold=0.5,
    )
    assert m.effect == pytest.approx(1.0) and m.z == pytest.approx(10.0)


def test_nothing_measured_is_insufficient_data_not_ok() -> None:
    # An empty profile (or none of its statistics in the results) and no reference rates:
    # n >= min_n, yet not one measure.
    result = measure_drift(
        features=np.zeros((100, 0)),
        feature_names=[],
        feature_reference={},
        positives=None,
        classes=["crack"],
        reference_rates=None,
        thresholds=LOOSE,
    )
    assert result.n == 100 and result.measures == []
    assert result.verdict is Verdict.insufficient_data
