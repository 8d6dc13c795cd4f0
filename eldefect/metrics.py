"""Multi-label metrics and per-class thresholds, in numpy.

Average precision is the mean precision at each positive's rank (sklearn's definition). A
class with no positives in the data has no AP or recall (NaN), and macro means skip it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    positives = truth.sum()
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = truth[order] > 0
    precision_at_hits = np.cumsum(hits)[hits] / (np.flatnonzero(hits) + 1)
    return float(precision_at_hits.sum() / positives)


@dataclass(frozen=True)
class ClassMetrics:
    ap: float
    recall: float
    precision: float
    f1: float
    support: int


def class_metrics(scores: np.ndarray, truth: np.ndarray, threshold: float) -> ClassMetrics:
    pred = scores >= threshold
    tp = float(np.sum(pred & (truth > 0)))
    support = int(truth.sum())
    recall = tp / support if support else float("nan")
    precision = tp / pred.sum() if pred.sum() else (1.0 if support == 0 else 0.0)
    f1 = 2 * precision * recall / (precision + recall) if support and precision + recall else 0.0
    return ClassMetrics(average_precision(scores, truth), recall, precision, f1, support)


def per_class_metrics(
    probs: np.ndarray, targets: np.ndarray, labels: Sequence[str], thresholds: Mapping[str, float]
) -> dict[str, ClassMetrics]:
    return {
        name: class_metrics(probs[:, i], targets[:, i], thresholds[name])
        for i, name in enumerate(labels)
    }


def exact_match(probs: np.ndarray, targets: np.ndarray, thresholds: Sequence[float]) -> float:
    """Share of images with every label right at the given per-class thresholds."""
    if not len(probs):
        return float("nan")
    return float(((probs >= np.asarray(thresholds)) == (targets > 0)).all(axis=1).mean())


def macro(per_class: Mapping[str, ClassMetrics], field: str) -> float:
    values = [getattr(m, field) for m in per_class.values() if m.support > 0]
    return float(np.mean(values)) if values else float("nan")


def tune_thresholds(
    probs: np.ndarray,
    targets: np.ndarray,
    labels: Sequence[str],
    *,
    recall_floor: float,
    default: float = 0.5,
) -> dict[str, float]:
    """Per class: the threshold with the highest F1 among those keeping recall >= the floor.

    Candidates are the midpoints between sorted validation scores, so a threshold never sits
    exactly on a validation score. A class without validation positives keeps `default`.
    """
    thresholds: dict[str, float] = {}
    for i, name in enumerate(labels):
        scores, truth = probs[:, i], targets[:, i] > 0
        if not truth.any():
            thresholds[name] = default
            continue
        s = np.unique(scores)
        candidates = np.concatenate([[s[0] / 2], (s[:-1] + s[1:]) / 2, [(s[-1] + 1) / 2]])
        best, best_f1 = float(candidates[0]), -1.0
        for t in candidates:
            pred = scores >= t
            tp = np.sum(pred & truth)
            recall = tp / truth.sum()
            if recall < recall_floor:
                break  # recall only falls as the threshold rises
            f1 = 2 * tp / (pred.sum() + truth.sum())
            if f1 >= best_f1:
                best, best_f1 = float(t), float(f1)
        thresholds[name] = best
    return thresholds


def reliability_table(
    scores: np.ndarray, truth: np.ndarray, bins: int = 10
) -> list[dict[str, float]]:
    """Per equal-width probability bin: its count, mean predicted probability, observed rate."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(scores, edges[1:-1]), 0, bins - 1)
    table = []
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        table.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": count,
                "predicted": float(scores[inside].mean()) if count else float("nan"),
                "observed": float((truth[inside] > 0).mean()) if count else float("nan"),
            }
        )
    return table


def expected_calibration_error(scores: np.ndarray, truth: np.ndarray, bins: int = 10) -> float:
    """Mean |predicted - observed| over equal-width bins, weighted by how many scores each holds."""
    table = reliability_table(scores, truth, bins)
    n = sum(row["count"] for row in table)
    if n == 0:
        return float("nan")
    return float(
        sum(row["count"] * abs(row["predicted"] - row["observed"]) for row in table if row["count"])
        / n
    )


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


def bootstrap_intervals(
    probs: np.ndarray,
    targets: np.ndarray,
    labels: Sequence[str],
    thresholds: Mapping[str, float],
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, Interval]]:
    """Percentile bootstrap intervals of each class's AP, recall and precision.

    Images are resampled with replacement, so an interval shows how much a test set of this
    size can tell: with 17 positives an AP of 0.65 is compatible with a wide range.
    """
    rng = np.random.default_rng(seed)
    n = len(probs)
    fields = ("ap", "recall", "precision")
    draws: dict[str, dict[str, list[float]]] = {name: {f: [] for f in fields} for name in labels}
    for _ in range(resamples):
        rows = rng.integers(0, n, n)
        for name, m in per_class_metrics(probs[rows], targets[rows], labels, thresholds).items():
            if m.support == 0:
                continue  # a resample without positives says nothing about this class
            for f in fields:
                draws[name][f].append(getattr(m, f))
    tail = (1 - level) / 2 * 100
    out: dict[str, dict[str, Interval]] = {}
    for name, by_field in draws.items():
        out[name] = {}
        for f, values in by_field.items():
            if values:
                low, high = np.percentile(values, [tail, 100 - tail])
                out[name][f] = Interval(float(low), float(high))
            else:
                out[name][f] = Interval(float("nan"), float("nan"))
    return out


def format_intervals(
    per_class: Mapping[str, ClassMetrics],
    intervals: Mapping[str, Mapping[str, Interval]],
    title: str = "",
) -> str:
    """Per class: AP, recall and precision, each with its interval, and the support."""
    head = f"{'class':<24}{'AP [95% CI]':>22}{'recall [95% CI]':>22}{'prec [95% CI]':>22}"
    rows = [title, head + f"{'support':>9}"] if title else [head + f"{'support':>9}"]
    for name, m in per_class.items():
        cells = "".join(
            f"{getattr(m, f):>7.3f} [{intervals[name][f].low:.2f}, {intervals[name][f].high:.2f}]"
            for f in ("ap", "recall", "precision")
        )
        rows.append(f"{name:<24}{cells}{m.support:>9d}")
    means = "".join(f"{macro(per_class, f):>7.3f}{'':>15}" for f in ("ap", "recall", "precision"))
    rows.append(f"{'macro':<24}{means}")
    return "\n".join(rows)


@dataclass(frozen=True)
class LevelRow:
    """Images whose labellers gave one confidence level (ELPV: 0, 1/3, 2/3 or 1)."""

    level: float
    count: int
    flagged_at_half: float  # share with a probability >= 0.5
    flagged_tuned: float  # share at or above the tuned threshold
    nearest: float  # share whose probability is nearer this level than any other level


def confidence_levels(
    scores: np.ndarray, confidences: np.ndarray, threshold: float
) -> list[LevelRow]:
    """One target's scores broken down by the labellers' confidence level.

    `nearest` reads the probability as an estimate of the labellers' confidence (a model trained
    on `data.soft_targets` is fitted to exactly that), which makes it a many-level classifier.
    """
    levels = np.unique(confidences)
    nearest = levels[np.abs(scores[:, None] - levels[None, :]).argmin(axis=1)]
    rows = []
    for level in levels:
        inside = confidences == level
        rows.append(
            LevelRow(
                level=float(level),
                count=int(inside.sum()),
                flagged_at_half=float((scores[inside] >= 0.5).mean()),
                flagged_tuned=float((scores[inside] >= threshold).mean()),
                nearest=float((nearest[inside] == level).mean()),
            )
        )
    return rows


def level_accuracy(rows: Sequence[LevelRow]) -> float:
    """Share of all images whose probability is nearest their own labelled level."""
    total = sum(r.count for r in rows)
    return sum(r.nearest * r.count for r in rows) / total if total else float("nan")


def format_levels(rows: Sequence[LevelRow], title: str = "") -> str:
    head = f"{'labelled confidence':<22}{'images':>8}{'>= 0.5':>9}{'>= tuned':>10}{'nearest':>9}"
    lines = [title, head] if title else [head]
    for r in rows:
        lines.append(
            f"{r.level:<22.3f}{r.count:>8d}{r.flagged_at_half:>9.3f}{r.flagged_tuned:>10.3f}"
            f"{r.nearest:>9.3f}"
        )
    total = sum(r.count for r in rows)
    lines.append(f"{'all levels':<22}{total:>8d}{'':>19}{level_accuracy(rows):>9.3f}")
    return "\n".join(lines)


def format_table(per_class: Mapping[str, ClassMetrics], title: str = "") -> str:
    head = f"{'class':<24}{'AP':>7}{'recall':>8}{'prec':>7}{'F1':>7}{'support':>9}"
    rows = [title, head] if title else [head]
    for name, m in per_class.items():
        rows.append(
            f"{name:<24}{m.ap:>7.3f}{m.recall:>8.3f}{m.precision:>7.3f}{m.f1:>7.3f}{m.support:>9d}"
        )
    rows.append(
        f"{'macro':<24}{macro(per_class, 'ap'):>7.3f}{macro(per_class, 'recall'):>8.3f}"
        f"{macro(per_class, 'precision'):>7.3f}{macro(per_class, 'f1'):>7.3f}"
    )
    return "\n".join(rows)
