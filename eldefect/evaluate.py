"""`eldefect evaluate`: score a registered model on a labelled folder, log the scores to MLflow."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np

from eldefect.data.readers import DatasetError, Sample, read_elpv, read_voc
from eldefect.imaging import ImageDecodeError, decode_gray
from eldefect.labels import LabelSet
from eldefect.metrics import (
    ClassMetrics,
    Interval,
    LevelRow,
    bootstrap_intervals,
    confidence_levels,
    exact_match,
    expected_calibration_error,
    format_intervals,
    format_levels,
    format_table,
    level_accuracy,
    macro,
    per_class_metrics,
)
from eldefect.predictor import Backend, Predictor, load_predictor
from eldefect.registry import configure_mlflow
from eldefect.settings import Settings, get_settings

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    tuned: dict[str, ClassMetrics]
    at_half: dict[str, ClassMetrics]
    n_images: int
    # Bootstrap intervals of the tuned table: how much this many images can tell.
    intervals: dict[str, dict[str, Interval]]
    calibration_error: dict[str, float]
    runtime: str  # what computed the probabilities (eldefect.predictor backends)
    # Share of images with every label right, at the tuned thresholds and at 0.5.
    accuracy: float
    accuracy_at_half: float
    # One-target data with labelled confidence levels (ELPV): the scores level by level.
    levels: list[LevelRow] | None = None

    def metrics(self) -> dict[str, float]:
        out = {
            "n_images": float(self.n_images),
            "accuracy": self.accuracy,
            "at_0.5_accuracy": self.accuracy_at_half,
        }
        if self.levels:
            out["level_accuracy"] = level_accuracy(self.levels)
        for prefix, table in (("", self.tuned), ("at_0.5_", self.at_half)):
            for field in ("ap", "recall", "precision", "f1"):
                out[f"{prefix}macro_{field}"] = macro(table, field)
            for name, m in table.items():
                out |= {
                    f"{prefix}recall_{name}": m.recall,
                    f"{prefix}precision_{name}": m.precision,
                }
        out |= {f"ap_{name}": m.ap for name, m in self.tuned.items()}
        return out

    def report(self) -> str:
        ece = "  ".join(f"{name} {value:.3f}" for name, value in self.calibration_error.items())
        return (
            format_intervals(
                self.tuned,
                self.intervals,
                f"{self.n_images} images ({self.runtime}), tuned thresholds, "
                "95% bootstrap intervals",
            )
            + "\n\n"
            + format_table(self.at_half, "threshold 0.5")
            + f"\n\nexpected calibration error (10 bins): {ece}"
            + f"\naccuracy (every label right): {self.accuracy:.3f} at the tuned thresholds, "
            f"{self.accuracy_at_half:.3f} at 0.5"
            + (
                "\n\n" + format_levels(self.levels, "by labelled confidence (share of images)")
                if self.levels
                else ""
            )
        )


def read_scored_folder(
    folder: Path, labels: LabelSet, *, data_format: str, cell_type: str | None = None
) -> list[Sample]:
    """A labelled folder read against a model's labels. Names the model does not know read
    as no defect, so they are named in a warning: scores against another label spelling
    would otherwise look like a model that misses everything."""
    if data_format == "elpv":
        samples, report = read_elpv(folder, labels, cell_type=cell_type)
    else:
        samples, report = read_voc(folder, labels, ignore_unknown_labels=True)
    if report.unknown_labels:
        log.warning(
            "%s: label names the model does not know, scored as no defect: %s",
            folder,
            dict(report.unknown_labels),
        )
    return samples


def predict_samples(
    predictor: Predictor, samples: list[Sample], *, max_pixels: int, batch: int = 32
) -> tuple[np.ndarray, list[Sample]]:
    """The probabilities of the samples whose image decodes, and those samples. An image that
    does not is named in a warning and left out of the scores, as training leaves it out."""
    probs, kept = [], []
    for start in range(0, len(samples), batch):
        images = []
        for sample in samples[start : start + batch]:
            try:
                data = sample.path.read_bytes()
                images.append(
                    decode_gray(data, max_pixels=max_pixels, min_side=predictor.input_size)
                )
            except (ImageDecodeError, OSError) as exc:
                log.warning("%s: %s; left out of the scores", sample.path, exc)
                continue
            kept.append(sample)
        if images:
            probs.append(predictor.predict(images))
    return (np.concatenate(probs) if probs else np.zeros((0, len(predictor.labels)))), kept


def evaluate_model(
    model_uri: str,
    data: Path,
    *,
    data_format: str = "voc",
    settings: Settings | None = None,
    backend: Backend | None = None,
    log_to_mlflow: bool = True,
) -> Evaluation:
    """Scores as served: `backend` defaults to the one workers use (`inference_backend`),
    so an int8 copy in service is what gets scored."""
    settings = settings or get_settings()
    configure_mlflow(settings)
    predictor = load_predictor(model_uri, backend=backend or settings.inference_backend)
    labels = LabelSet("model", tuple(predictor.labels))
    samples = read_scored_folder(data, labels, data_format=data_format)
    probs, samples = predict_samples(predictor, samples, max_pixels=settings.max_image_pixels)
    if not samples:
        raise DatasetError(f"{data} holds no labelled images to evaluate on")
    targets = np.stack([s.target for s in samples])
    names, thresholds = predictor.labels, predictor.thresholds
    cuts = [thresholds[name] for name in names]
    levels = None
    known = [s.confidence for s in samples if s.confidence is not None]
    if len(names) == 1 and samples and len(known) == len(samples):
        levels = confidence_levels(probs[:, 0], np.concatenate(known), cuts[0])
    result = Evaluation(
        per_class_metrics(probs, targets, names, thresholds),
        per_class_metrics(probs, targets, names, dict.fromkeys(names, 0.5)),
        len(samples),
        bootstrap_intervals(probs, targets, names, thresholds),
        {
            name: expected_calibration_error(probs[:, i], targets[:, i])
            for i, name in enumerate(names)
        },
        predictor.backend,
        exact_match(probs, targets, cuts),
        exact_match(probs, targets, [0.5] * len(names)),
        levels,
    )
    if log_to_mlflow:
        with mlflow.start_run(run_name="evaluate", tags={"eldefect_kind": "evaluate"}):
            mlflow.log_params(
                {
                    "model_uri": model_uri,
                    "data": str(data),
                    "format": data_format,
                    "runtime": predictor.backend,
                }
            )
            mlflow.log_metrics(result.metrics())
            mlflow.log_text(result.report(), "metrics.txt")
    return result
