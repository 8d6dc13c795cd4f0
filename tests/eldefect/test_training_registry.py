"""Training, the MLflow registry round trip and serving backends, on tiny synthetic models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from eldefect.config import load_train_config
from eldefect.data.readers import read_voc
from eldefect.data.synth import write_synthetic_dataset
from eldefect.imaging import decode_gray
from eldefect.labels import load_label_set
from eldefect.metrics import macro, per_class_metrics
from eldefect.predictor import load_predictor
from eldefect.registry import (
    STAGING,
    load_card,
    load_model,
    model_uri,
    promote,
    register_run,
    resolve_alias,
)
from eldefect.stats import FEATURES
from eldefect.train import train
from tests.conftest import ModelStore

CONFIG = Path(__file__).parents[2] / "configs/train/synthetic.yaml"
DRAWN = ["crack", "black_core", "thick_line", "corner", "fragment"]


def _holdout(store: ModelStore) -> list[np.ndarray]:
    return [
        decode_gray(p.read_bytes(), max_pixels=10**7)
        for p in sorted((store.images / "JPEGImages").iterdir())[:8]
    ]


@pytest.mark.slow
def test_short_training_learns_the_synthetic_classes(settings_env: Path) -> None:
    """Validation recall >= 0.9 on the drawn classes, checked on images it never saw."""
    outcome = train(load_train_config(CONFIG), progress=False)
    assert outcome.metrics["best_val_macro_recall"] >= 0.9

    holdout = write_synthetic_dataset(
        settings_env / "holdout", n=200, seed=1234, size=96, classes=DRAWN, progress=False
    )
    samples, _ = read_voc(holdout, load_label_set())
    predictor = load_predictor(outcome.model_uri, backend="torch")
    probs = predictor.predict([decode_gray(s.path.read_bytes(), max_pixels=10**7) for s in samples])
    targets = np.stack([s.target for s in samples])
    scores = per_class_metrics(probs, targets, predictor.labels, predictor.thresholds)
    drawn = {k: v for k, v in scores.items() if k in DRAWN}
    assert macro(drawn, "recall") >= 0.9, scores
    assert macro(drawn, "ap") >= 0.9, scores
    # The run logged what the card needs.
    card = outcome.card
    assert card.labels == list(load_label_set().labels)
    assert set(card.profile["features"]) == set(FEATURES)
    # Prediction drift's reference: what the kept model predicts on validation images.
    assert set(card.profile["predicted_positive_rates"]) == set(card.labels)
    assert all(0.0 <= p <= 1.0 for p in card.profile["mean_probabilities"].values())
    assert card.profile["n_validation_images"] > 0
    assert card.selection_metric == "val_macro_ap"


def test_registry_round_trip_gives_the_same_probabilities(production_model: ModelStore) -> None:
    images = _holdout(production_model)
    uri = f"models:/{production_model.name}@production"
    model, card = load_model(model_uri(production_model.name, production_model.v1))
    from eldefect.preprocess import preprocess_batch

    with torch.inference_mode():
        expected = torch.sigmoid(model(preprocess_batch(images, card.input_spec))).numpy()
    served = load_predictor(uri, backend="torch")
    assert len(images) >= 2
    np.testing.assert_allclose(served.predict(images), expected, atol=1e-6)
    onnx = load_predictor(uri, backend="onnx")
    assert onnx.backend == "onnxruntime-cpu"
    np.testing.assert_allclose(onnx.predict(images), expected, atol=1e-4)
    result = served.result(expected[0])
    assert set(result.probabilities) == set(card.labels)
    assert result.defects == [
        k for k in card.labels if result.probabilities[k] >= card.thresholds[k]
    ]


def test_promotion_moves_staging_only_when_better(production_model: ModelStore) -> None:
    name, v1, v2 = production_model.name, production_model.v1, production_model.v2
    assert resolve_alias(name, "production") == v1
    better = (
        load_card(model_uri(name, v2)).selection_value
        > load_card(model_uri(name, v1)).selection_value
    )
    decision = promote(name=name, version=v2)
    assert (STAGING in decision.moved) == better
    assert resolve_alias(name, "production") == v1  # never moved without --to production
    decision = promote(name=name, version=v2, to_production=True)
    assert "production" in decision.moved
    assert resolve_alias(name, "production") == v2
    assert "production" in decision.describe()


def test_register_creates_a_new_version(production_model: ModelStore) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    run_id = client.get_model_version(production_model.name, production_model.v1).run_id
    assert run_id is not None
    again = register_run(run_id, production_model.name)
    assert int(again) > int(production_model.v2)
    assert resolve_alias("no_such_model", "production") is None
