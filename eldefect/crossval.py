"""K-fold cross-validation of a training config: `eldefect train --config FILE --cv K`.

One validation split of a few hundred images cannot tell recipes apart on a rare class (13
`broken` images in PV-Multi-Defect's). Here the real `train()` runs K times, validating on
each stratified fold in turn, and every image gets an out-of-fold (OOF) probability from the
model that never saw it. From those:
- per class, the mean and spread over folds of AP, and of recall and precision at thresholds
  tuned on the OTHER folds' OOF predictions (what a threshold promises on data it never saw);
- thresholds tuned on all OOF predictions: what the final model ships with;
- calibration of the OOF probabilities: expected calibration error per class, and a
  reliability table over all classes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from eldefect.config import TrainConfig
from eldefect.labels import load_label_set
from eldefect.metrics import (
    ClassMetrics,
    exact_match,
    expected_calibration_error,
    per_class_metrics,
    reliability_table,
    tune_thresholds,
)
from eldefect.settings import Settings
from eldefect.tracking import Tracker
from eldefect.train import train

log = logging.getLogger(__name__)

FIELDS = ("ap", "recall", "precision")


@dataclass
class FoldResult:
    fold: int
    run_id: str
    best_epoch: int
    minutes: float
    val_idx: np.ndarray  # dataset rows this fold validated on
    probs: np.ndarray  # (n_fold, C) out-of-fold probabilities
    targets: np.ndarray  # (n_fold, C)


@dataclass
class CrossValidation:
    labels: list[str]
    folds: list[FoldResult]
    recall_floor: float
    default_threshold: float

    @property
    def oof_probs(self) -> np.ndarray:
        return np.concatenate([f.probs for f in self.folds])  # (N, C)

    @property
    def oof_targets(self) -> np.ndarray:
        return np.concatenate([f.targets for f in self.folds])  # (N, C)

    def _tune(self, probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        return tune_thresholds(
            probs,
            targets,
            self.labels,
            recall_floor=self.recall_floor,
            default=self.default_threshold,
        )

    @property
    def thresholds(self) -> dict[str, float]:
        """Tuned on every out-of-fold prediction: the thresholds the final model ships."""
        return self._tune(self.oof_probs, self.oof_targets)

    @cached_property
    def thresholds_of_others(self) -> list[dict[str, float]]:
        """Per fold: thresholds tuned on the other folds' OOF predictions (tuned once, as the
        table, the accuracy and the card all score with them)."""
        out = []
        for i in range(len(self.folds)):
            others = [f for j, f in enumerate(self.folds) if j != i]
            out.append(
                self._tune(
                    np.concatenate([f.probs for f in others]),
                    np.concatenate([f.targets for f in others]),
                )
            )
        return out

    def per_fold(self) -> list[dict[str, ClassMetrics]]:
        """Each fold scored at thresholds tuned on the other folds' OOF predictions."""
        return [
            per_class_metrics(fold.probs, fold.targets, self.labels, thresholds)
            for fold, thresholds in zip(self.folds, self.thresholds_of_others, strict=True)
        ]

    def accuracy(self) -> dict[str, dict[str, float]]:
        """Every label right, per fold, at 0.5 and at the other folds' thresholds: mean, std."""
        at_half, tuned = [], []
        for fold, others in zip(self.folds, self.thresholds_of_others, strict=True):
            at_half.append(exact_match(fold.probs, fold.targets, [0.5] * len(self.labels)))
            tuned.append(exact_match(fold.probs, fold.targets, [others[n] for n in self.labels]))
        return {
            name: {"mean": float(np.mean(values)), "std": float(np.std(values))}
            for name, values in (("at_0.5", at_half), ("tuned", tuned))
        }

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """class -> metric -> {mean, std, min} over folds (folds without positives skipped)."""
        folds = self.per_fold()
        out: dict[str, dict[str, dict[str, float]]] = {}
        for name in self.labels:
            out[name] = {}
            for field in FIELDS:
                values = [getattr(f[name], field) for f in folds if f[name].support > 0]
                out[name][field] = {
                    "mean": float(np.mean(values)) if values else float("nan"),
                    "std": float(np.std(values)) if values else float("nan"),
                    "min": float(np.min(values)) if values else float("nan"),
                }
        return out

    def calibration(self) -> dict[str, Any]:
        probs, targets = self.oof_probs, self.oof_targets
        return {
            "ece": {
                name: expected_calibration_error(probs[:, i], targets[:, i])
                for i, name in enumerate(self.labels)
            },
            "reliability": reliability_table(probs.reshape(-1), targets.reshape(-1)),
        }

    def card_summary(self) -> dict[str, Any]:
        """What the model card carries: the CV figures, thresholds and calibration."""
        return {
            "folds": len(self.folds),
            "per_class": self.summary(),
            "thresholds": self.thresholds,
            "calibration": self.calibration(),
            "accuracy": self.accuracy(),
            "best_epochs": [f.best_epoch for f in self.folds],
            "run_ids": [f.run_id for f in self.folds],
        }

    def report(self) -> str:
        summary, calib = self.summary(), self.calibration()
        support = self.oof_targets.sum(0).astype(int)
        head = f"{'class':<24}{'AP':>16}{'recall':>16}{'precision':>16}{'ECE':>7}{'support':>9}"
        rows = [
            f"{len(self.folds)}-fold CV: mean ± std over folds; recall and precision at "
            "thresholds tuned on the other folds' out-of-fold predictions",
            head,
        ]
        for i, name in enumerate(self.labels):
            cells = "".join(
                f"{summary[name][f]['mean']:>9.3f} ± {summary[name][f]['std']:.3f}" for f in FIELDS
            )
            rows.append(f"{name:<24}{cells}{calib['ece'][name]:>7.3f}{support[i]:>9d}")
        macro = {f: np.nanmean([summary[n][f]["mean"] for n in self.labels]) for f in FIELDS}
        rows.append(
            f"{'macro':<24}"
            + "".join(f"{macro[f]:>9.3f}{'':>7}" for f in FIELDS)
            + f"{np.nanmean(list(calib['ece'].values())):>7.3f}"
        )
        accuracy = self.accuracy()
        rows.append(
            "accuracy (every label right): "
            + "; ".join(
                f"{label} {accuracy[key]['mean']:.3f} ± {accuracy[key]['std']:.3f}"
                for key, label in (("at_0.5", "at 0.5"), ("tuned", "at tuned thresholds"))
            )
        )
        minutes = ", ".join(f"{f.minutes:.1f}" for f in self.folds)
        epochs = ", ".join(str(f.best_epoch) for f in self.folds)
        rows.append(f"minutes per fold: {minutes}; kept epochs: {epochs}")
        return "\n".join(rows)


def cross_validate(
    config: TrainConfig,
    k: int,
    *,
    data_root: Path | None = None,
    settings: Settings | None = None,
    device: str = "cpu",
    progress: bool = True,
    tracker: Tracker | None = None,
) -> CrossValidation:
    """Train `config` K times, each validating on one stratified fold (split seed
    `config.data.split_seed`), and gather the out-of-fold predictions."""
    folds: list[FoldResult] = []
    for i in range(k):
        fold_config = config.model_copy(deep=True)
        fold_config.name = f"{config.name}-fold{i}of{k}"
        fold_config.data.folds, fold_config.data.fold = k, i
        outcome = train(
            fold_config,
            data_root=data_root,
            settings=settings,
            device=device,
            progress=progress,
            tracker=tracker,
        )
        folds.append(
            FoldResult(
                fold=i,
                run_id=outcome.run_id,
                best_epoch=outcome.best_epoch,
                minutes=outcome.metrics["train_minutes"],
                val_idx=outcome.val_idx,
                probs=outcome.validation.probs,
                targets=outcome.validation.targets,
            )
        )
        per_class_ap = ", ".join(f"{name} {m.ap:.3f}" for name, m in outcome.per_class.items())
        # Per class, so that a run cut short still leaves each finished fold's figures.
        log.info(
            "fold %d/%d: val macro AP %.4f, kept epoch %d, %.1f min; AP %s",
            i + 1, k, outcome.metrics["best_val_macro_ap"], outcome.best_epoch,
            folds[-1].minutes, per_class_ap,
        )  # fmt: skip
    labels = list(load_label_set(config.data.labels).labels)
    return CrossValidation(
        labels=labels,
        folds=folds,
        recall_floor=config.thresholds.recall_floor,
        default_threshold=config.thresholds.default,
    )
