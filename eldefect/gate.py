"""The gate: a challenger model against the champion (production), before any alias moves.

Both are scored on the same evaluation sets, neither of which either model trained on (a
fixed folder named in settings, and the held-back reviewed production images). On each set
the challenger passes when

- its macro AP is not below the champion's by more than `ap_margin`, and
- no class's recall, each model at its own tuned thresholds, is below the champion's by more
  than `recall_margin`, except where the champion's recall was bought by flagging nearly
  every image: when its precision on the class is no better than `UNINFORMATIVE_LIFT` times
  the class's prevalence in the set, calling every image positive would do as well, so there
  is no recall worth protecting (a mono-trained model calls almost every poly cell defective:
  recall 0.95, accuracy 0.30). Each such skip is written down in the set's notes.

It must pass on every set. Every number and every reason is kept, so the record says what
stopped a challenger. Pure numpy; `score_folder` is the one function that runs a model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from eldefect.metrics import exact_match, macro, per_class_metrics

if TYPE_CHECKING:
    from eldefect.predictor import Predictor

# Precision at most this many times the class's prevalence counts as no better than flagging
# every image (a precision equal to the prevalence is exactly what "all positive" scores).
UNINFORMATIVE_LIFT = 1.1


@dataclass(frozen=True)
class SetScores:
    """One model on one evaluation set."""

    n_images: int
    macro_ap: float  # over classes with positives in the set
    accuracy: float  # every label right, at the model's thresholds
    ap: dict[str, float]
    recall: dict[str, float]  # at the model's tuned thresholds
    precision: dict[str, float]  # at the model's tuned thresholds
    support: dict[str, int]

    def flags_everything(self, label: str) -> bool:
        """Its precision on `label` is no better than calling every image positive."""
        prevalence = self.support.get(label, 0) / self.n_images if self.n_images else 0.0
        return self.precision.get(label, 0.0) <= UNINFORMATIVE_LIFT * prevalence


def score(
    probs: np.ndarray, targets: np.ndarray, labels: Sequence[str], thresholds: Mapping[str, float]
) -> SetScores:
    """Scores of (N, C) probabilities against (N, C) multi-hot targets."""
    assert probs.shape == targets.shape, f"probs {probs.shape} vs targets {targets.shape}"
    per_class = per_class_metrics(probs, targets, labels, thresholds)
    return SetScores(
        n_images=len(probs),
        macro_ap=macro(per_class, "ap"),
        accuracy=exact_match(probs, targets, [thresholds[name] for name in labels]),
        ap={name: m.ap for name, m in per_class.items()},
        recall={name: m.recall for name, m in per_class.items()},
        precision={name: m.precision for name, m in per_class.items()},
        support={name: m.support for name, m in per_class.items()},
    )


def score_folder(
    predictor: Predictor,
    folder: Path,
    *,
    data_format: str = "voc",
    cell_type: str | None = None,
    max_pixels: int,
) -> SetScores:
    """Run a loaded model over a labelled folder and score it at its own thresholds."""
    from eldefect.evaluate import predict_samples, read_scored_folder
    from eldefect.labels import LabelSet

    labels = LabelSet("model", tuple(predictor.labels))
    samples = read_scored_folder(folder, labels, data_format=data_format, cell_type=cell_type)
    probs, samples = predict_samples(predictor, samples, max_pixels=max_pixels)
    targets = np.stack([s.target for s in samples]) if samples else np.zeros_like(probs)
    return score(probs, targets, predictor.labels, predictor.thresholds)


@dataclass
class SetVerdict:
    name: str
    passed: bool
    reasons: list[str]
    champion: SetScores | None
    challenger: SetScores
    notes: list[str] = field(default_factory=list)  # rules not applied, and why


def compare(
    name: str,
    champion: SetScores | None,
    challenger: SetScores,
    *,
    ap_margin: float,
    recall_margin: float,
) -> SetVerdict:
    """The challenger against the champion on one set (no champion: nothing to lose to)."""
    reasons: list[str] = []
    notes: list[str] = []
    if champion is None:
        return SetVerdict(name, True, ["no champion to compare with"], None, challenger)
    if not (math.isnan(challenger.macro_ap) or math.isnan(champion.macro_ap)):
        floor = champion.macro_ap - ap_margin
        if challenger.macro_ap < floor:
            reasons.append(
                f"{name}: macro AP {challenger.macro_ap:.4f} < champion "
                f"{champion.macro_ap:.4f} - margin {ap_margin}"
            )
    for label, recall in challenger.recall.items():
        before = champion.recall.get(label, math.nan)
        if math.isnan(recall) or math.isnan(before):
            continue  # no positives of this class in the set, or the champion lacks it
        if recall >= before - recall_margin:
            continue
        if champion.flags_everything(label):
            notes.append(
                f"{name}: recall of {label} not compared: the champion's precision "
                f"{champion.precision[label]:.4f} is no better than flagging every image "
                f"(prevalence {champion.support[label] / champion.n_images:.4f})"
            )
            continue
        reasons.append(
            f"{name}: recall of {label} {recall:.4f} < champion {before:.4f} "
            f"- margin {recall_margin}"
        )
    return SetVerdict(name, not reasons, reasons, champion, challenger, notes)


@dataclass
class GateResult:
    passed: bool
    reasons: list[str]
    sets: list[SetVerdict] = field(default_factory=list)
    margins: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Every number, JSON-ready (NaN as None), for the trigger record."""

        def clean(value: Any) -> Any:
            if isinstance(value, float) and math.isnan(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            return value

        return {
            "passed": self.passed,
            "reasons": list(self.reasons),
            "margins": dict(self.margins),
            "sets": {
                s.name: {
                    "passed": s.passed,
                    "reasons": s.reasons,
                    "notes": s.notes,
                    "champion": clean(asdict(s.champion)) if s.champion else None,
                    "challenger": clean(asdict(s.challenger)),
                }
                for s in self.sets
            },
        }

    def tags(self) -> dict[str, str]:
        """The decision and the headline numbers as registry tags (strings, short)."""
        tags = {
            "gate.passed": str(self.passed).lower(),
            "gate.reasons": "; ".join(self.reasons)[:4900] or "none",
        }
        for s in self.sets:
            for who, scores in (("champion", s.champion), ("challenger", s.challenger)):
                if scores is None:
                    continue
                tags[f"gate.{s.name}.{who}.macro_ap"] = f"{scores.macro_ap:.4f}"
                tags[f"gate.{s.name}.{who}.accuracy"] = f"{scores.accuracy:.4f}"
                tags[f"gate.{s.name}.{who}.n_images"] = str(scores.n_images)
                for label, recall in scores.recall.items():
                    tags[f"gate.{s.name}.{who}.recall.{label}"] = f"{recall:.4f}"
        return tags

    def describe(self) -> str:
        lines = [f"gate: {'passed' if self.passed else 'not passed'}"]
        for s in self.sets:
            champ = s.champion
            lines.append(
                f"  {s.name} ({s.challenger.n_images} images): macro AP challenger "
                f"{s.challenger.macro_ap:.4f}"
                + (f" vs champion {champ.macro_ap:.4f}" if champ else "")
                + f", accuracy {s.challenger.accuracy:.4f}"
                + (f" vs {champ.accuracy:.4f}" if champ else "")
            )
        lines += [f"  - {reason}" for reason in self.reasons]
        lines += [f"  (note) {note}" for s in self.sets for note in s.notes]
        return "\n".join(lines)


def decide(sets: Sequence[SetVerdict], *, ap_margin: float, recall_margin: float) -> GateResult:
    """Passed only when there is at least one set and the challenger passes on each."""
    margins = {"ap_margin": ap_margin, "recall_margin": recall_margin}
    if not sets:
        reason = "no evaluation set: name one (ELDEFECT_RETRAIN_EVAL_DATA) or collect reviews"
        return GateResult(False, [reason], [], margins)
    reasons = [r for s in sets if not s.passed for r in s.reasons]
    return GateResult(all(s.passed for s in sets), reasons, list(sets), margins)
