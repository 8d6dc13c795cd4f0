"""Drift statistics: a window of served images against a model's reference profile.

Pure numpy, no database and no torch. Two families of measures, one rule:

- input drift, per statistic f (eldefect.stats.FEATURES), with the reference mean mu_f and
  standard deviation sigma_f over the training images and the window mean m_f of n images:
      z_f = (m_f - mu_f) / (sigma_f / sqrt(n))        d_f = (m_f - mu_f) / sigma_f
- prediction drift, per class, with the reference predicted positive rate p0 and the window's
  rate p:
      z = (p - p0) / sqrt(p0 (1 - p0) / n)            h = 2 asin(sqrt p) - 2 asin(sqrt p0)

A measure drifts only when both |z| and |effect| reach their thresholds: z alone grows with
sqrt(n) and flags trivial shifts in large windows; the effect size alone is noisy in small
ones. A window of fewer than `min_n` images never alarms (`insufficient_data`), nor does one
in which nothing could be measured.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

# Floors that keep a degenerate reference from dividing by zero, or by next to nothing.
# sigma_f: one grey level of the 8-bit scale, the statistics' resolution (served images are
# mostly 8-bit, so a percentile moves in whole grey levels; of a 16-bit image, in steps of
# 1/4095, eldefect.stats._LEVELS). A reference spread below it means "constant in training"
# (p10 of cells with dark borders is 0 in every image), not that a thousandth of a grey level
# is a big shift: floored at 1e-6, one image in 200 at p10 = 1/255 gave z ~ 277 and `drift`;
# at 1/255 it is d = 0.005, z = 0.07, and a window's mean must move half a grey level to
# reach the default effect threshold (0.5). Only a sigma below the floor is replaced, so z
# and d are the formulas above, unchanged, for every statistic whose training spread is at
# least a grey level.
SIGMA_FLOOR = 1 / 255
# A reference rate of exactly 0 or 1 (no validation image predicted positive, or all of
# them) is taken as 1e-3 from the edge in the variance only, which keeps z finite and large
# for any real departure.
RATE_FLOOR = 1e-3


class Verdict(enum.StrEnum):
    """The same values as db.models.DriftVerdict (this module stays free of the database)."""

    ok = "ok"
    drift = "drift"
    insufficient_data = "insufficient_data"


class Kind(enum.StrEnum):
    feature = "feature"  # an input statistic: window mean vs the training profile
    rate = "class"  # a class's predicted positive rate vs the validation rate


@dataclass(frozen=True)
class Thresholds:
    """|z| and |effect| a measure must both reach to drift, per family, and the minimum n."""

    min_n: int
    z: float
    effect: float
    rate_z: float
    rate_effect: float

    def __post_init__(self) -> None:
        assert self.min_n >= 1, f"min_n must be at least 1, got {self.min_n}"
        assert min(self.z, self.effect, self.rate_z, self.rate_effect) > 0, "thresholds > 0"


@dataclass(frozen=True)
class Measure:
    kind: Kind
    name: str
    window_value: float
    reference_value: float
    z: float
    effect: float
    drifted: bool


@dataclass(frozen=True)
class DriftResult:
    n: int
    verdict: Verdict
    measures: list[Measure] = field(default_factory=list)

    @property
    def drifted(self) -> list[Measure]:
        return [m for m in self.measures if m.drifted]


def _passes(z: float, effect: float, z_threshold: float, effect_threshold: float) -> bool:
    return abs(z) >= z_threshold and abs(effect) >= effect_threshold


def feature_measures(
    window: np.ndarray,
    features: Sequence[str],
    reference: Mapping[str, Mapping[str, float]],
    *,
    z_threshold: float,
    effect_threshold: float,
) -> list[Measure]:
    """One measure per feature; `window` is (n, F) with columns in `features` order."""
    assert window.ndim == 2 and window.shape[1] == len(features), (
        f"window shape {window.shape} does not match {len(features)} features"
    )
    n = window.shape[0]
    assert n > 0, "an empty window has no mean"
    means = window.mean(0)  # (F,)
    out = []
    for name, m in zip(features, means, strict=True):
        mu = float(reference[name]["mean"])
        sigma = max(float(reference[name]["std"]), SIGMA_FLOOR)
        d = (float(m) - mu) / sigma
        z = d * math.sqrt(n)  # (m - mu) / (sigma / sqrt(n))
        passed = _passes(z, d, z_threshold, effect_threshold)
        out.append(Measure(Kind.feature, name, float(m), mu, z, d, passed))
    return out


def rate_measures(
    positives: np.ndarray,
    classes: Sequence[str],
    reference_rates: Mapping[str, float],
    *,
    z_threshold: float,
    effect_threshold: float,
) -> list[Measure]:
    """One measure per class; `positives` is (n, C) booleans (predicted positive per image)."""
    assert positives.ndim == 2 and positives.shape[1] == len(classes), (
        f"positives shape {positives.shape} does not match {len(classes)} classes"
    )
    n = positives.shape[0]
    assert n > 0, "an empty window has no rate"
    rates = positives.astype(np.float64).mean(0)  # (C,)
    out = []
    for name, p in zip(classes, rates, strict=True):
        p0 = float(reference_rates[name])
        assert 0.0 <= p0 <= 1.0, f"reference rate of {name} is {p0}, not a proportion"
        floored = min(max(p0, RATE_FLOOR), 1.0 - RATE_FLOOR)
        z = (float(p) - p0) / math.sqrt(floored * (1.0 - floored) / n)
        h = 2.0 * math.asin(math.sqrt(float(p))) - 2.0 * math.asin(math.sqrt(p0))
        passed = _passes(z, h, z_threshold, effect_threshold)
        out.append(Measure(Kind.rate, name, float(p), p0, z, h, passed))
    return out


def measure_drift(
    *,
    features: np.ndarray,
    feature_names: Sequence[str],
    feature_reference: Mapping[str, Mapping[str, float]],
    positives: np.ndarray | None,
    classes: Sequence[str],
    reference_rates: Mapping[str, float] | None,
    thresholds: Thresholds,
) -> DriftResult:
    """Input drift of the window's statistics and, when the reference has rates (and
    `positives` is given), prediction drift; the verdict over both.

    `features` is (n, F); `positives` is (n, C) or None. Below `min_n` the measures are still
    computed (an operator may want to look) but none counts as drifted. With nothing to
    measure (no feature columns and no rates) the verdict is `insufficient_data` too.
    """
    n = features.shape[0]
    if n == 0:
        return DriftResult(0, Verdict.insufficient_data)
    measures = feature_measures(
        features,
        feature_names,
        feature_reference,
        z_threshold=thresholds.z,
        effect_threshold=thresholds.effect,
    )
    if positives is not None and reference_rates is not None:
        assert positives.shape[0] == n, f"{positives.shape[0]} prediction rows for {n} images"
        measures += rate_measures(
            positives,
            classes,
            reference_rates,
            z_threshold=thresholds.rate_z,
            effect_threshold=thresholds.rate_effect,
        )
    if n < thresholds.min_n:
        quiet = [replace(m, drifted=False) for m in measures]
        return DriftResult(n, Verdict.insufficient_data, quiet)
    if not measures:  # no feature and no class to compare: "ok" would claim a check never made
        return DriftResult(n, Verdict.insufficient_data)
    verdict = Verdict.drift if any(m.drifted for m in measures) else Verdict.ok
    return DriftResult(n, verdict, measures)
