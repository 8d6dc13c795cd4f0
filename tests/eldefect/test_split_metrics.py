from __future__ import annotations

import numpy as np
import pytest

from eldefect.data.split import stratified_folds, stratified_split, validation_split
from eldefect.metrics import (
    average_precision,
    bootstrap_intervals,
    class_metrics,
    confidence_levels,
    exact_match,
    expected_calibration_error,
    format_levels,
    tune_thresholds,
)


def test_split_is_seeded_complete_and_stratified() -> None:
    rng = np.random.default_rng(0)
    targets = (rng.random((500, 6)) < [0.02, 0.05, 0.1, 0.3, 0.5, 0.04]).astype(np.float32)
    train, val = stratified_split(targets, 0.2, seed=3)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(500))
    assert abs(len(val) - 100) <= 1
    want = targets.sum(0) * 0.2
    assert np.all(np.abs(targets[val].sum(0) - want) <= 1.0)
    again_train, _ = stratified_split(targets, 0.2, seed=3)
    np.testing.assert_array_equal(train, again_train)


def test_average_precision_by_hand() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    truth = np.array([1, 0, 1, 0])
    # Positives at ranks 1 and 3: precision 1/1 and 2/3.
    assert average_precision(scores, truth) == pytest.approx((1 + 2 / 3) / 2)
    assert np.isnan(average_precision(scores, np.zeros(4)))


def test_class_metrics_at_a_threshold() -> None:
    m = class_metrics(np.array([0.9, 0.8, 0.2, 0.1]), np.array([1, 0, 1, 0]), 0.5)
    assert (m.recall, m.precision, m.f1, m.support) == (0.5, 0.5, 0.5, 2)


def test_thresholds_keep_the_recall_floor_and_maximise_f1() -> None:
    rng = np.random.default_rng(1)
    truth = (rng.random(300) < 0.2).astype(np.float32)
    scores = np.clip(truth * 0.3 + rng.random(300) * 0.7, 0, 1)
    probs, targets = np.stack([scores, scores], 1), np.stack([truth, np.zeros(300)], 1)
    t = tune_thresholds(probs, targets, ["a", "none"], recall_floor=0.9, default=0.5)
    assert class_metrics(scores, truth, t["a"]).recall >= 0.9
    assert t["none"] == 0.5  # no positives: the default stays
    # No threshold with recall >= floor has a better F1.
    best_f1 = class_metrics(scores, truth, t["a"]).f1
    for c in np.linspace(0, 1, 201):
        m = class_metrics(scores, truth, c)
        if m.recall >= 0.9:
            assert m.f1 <= best_f1 + 1e-9


def test_folds_are_disjoint_complete_and_hold_every_class() -> None:
    rng = np.random.default_rng(0)
    targets = (rng.random((400, 5)) < [0.02, 0.05, 0.1, 0.3, 0.5]).astype(np.float32)
    folds = stratified_folds(targets, 5, seed=1)
    assert sorted(np.bincount(folds).tolist()) == [80] * 5
    per_fold = np.stack([targets[folds == f].sum(0) for f in range(5)])  # (5, C)
    assert np.all(per_fold >= 1), per_fold  # even the 2% class (8 images) is in every fold
    assert np.all(per_fold.max(0) - per_fold.min(0) <= 1), per_fold
    np.testing.assert_array_equal(folds, stratified_folds(targets, 5, seed=1))
    train, val = validation_split(targets, val_fraction=0.2, seed=1, folds=5, fold=3)
    np.testing.assert_array_equal(val, np.flatnonzero(folds == 3))
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(400))


def test_calibration_error_of_a_calibrated_and_an_overconfident_score() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random(20000)
    calibrated = (rng.random(20000) < scores).astype(np.float32)
    assert expected_calibration_error(scores, calibrated) < 0.02
    # Always 0.95 sure while right half the time: off by 0.45.
    overconfident = np.full(1000, 0.95)
    assert expected_calibration_error(overconfident, np.arange(1000) % 2) == pytest.approx(0.45)


def test_bootstrap_intervals_hold_the_estimate_and_narrow_with_more_images() -> None:
    rng = np.random.default_rng(2)

    def width(n: int) -> float:
        truth = (rng.random(n) < 0.2).astype(np.float32)
        scores = np.clip(truth * 0.4 + rng.random(n) * 0.6, 0, 1)
        probs, targets = scores[:, None], truth[:, None]
        point = class_metrics(scores, truth, 0.5)
        ci = bootstrap_intervals(probs, targets, ["a"], {"a": 0.5}, resamples=300)["a"]
        assert ci["ap"].low <= point.ap <= ci["ap"].high
        assert ci["recall"].low <= point.recall <= ci["recall"].high
        return ci["ap"].high - ci["ap"].low

    assert width(2000) < width(80)


def test_exact_match_needs_every_label_right() -> None:
    probs = np.array([[0.9, 0.1], [0.9, 0.6], [0.2, 0.1]])
    targets = np.array([[1, 0], [1, 0], [1, 0]])
    assert exact_match(probs, targets, [0.5, 0.5]) == pytest.approx(1 / 3)
    assert exact_match(probs, targets, [0.1, 0.7]) == pytest.approx(1.0)


def test_confidence_levels_by_hand() -> None:
    scores = np.array([0.1, 0.6, 0.3, 0.5, 0.7, 0.95])
    levels = np.array([0.0, 0.0, 1 / 3, 1 / 3, 1.0, 1.0])
    rows = confidence_levels(scores, levels, threshold=0.65)
    assert [(r.level, r.count) for r in rows] == [(0.0, 2), (1 / 3, 2), (1.0, 2)]
    assert [r.flagged_at_half for r in rows] == [0.5, 0.5, 1.0]
    assert [r.flagged_tuned for r in rows] == [0.0, 0.0, 1.0]
    # Nearest of {0, 1/3, 1}: 0.1 -> 0, 0.6 -> 1/3, 0.3 -> 1/3, 0.5 -> 1/3, 0.7 -> 1, 0.95 -> 1.
    assert [r.nearest for r in rows] == [0.5, 1.0, 1.0]
    assert "all levels" in format_levels(rows)
