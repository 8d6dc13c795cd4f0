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
