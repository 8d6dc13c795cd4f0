"""The int8 serving copy: made and checked at training time, chosen by workers only when its
check passed, refused when its file could read other files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eldefect.imaging import decode_gray
from eldefect.predictor import load_predictor
from eldefect.quantize import check_int8
from tests.conftest import ModelStore

LABELS = ["a", "b"]


def _scores(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = (rng.random((200, 2)) < 0.3).astype(np.float32)
    probs = np.clip(targets * 0.5 + rng.random((200, 2)) * 0.5, 0, 1).astype(np.float32)
    return probs, targets


def test_an_int8_copy_that_scores_the_same_is_accepted() -> None:
    probs, targets = _scores()
    check = check_int8(
        probs,
        probs + 1e-4,
        targets,
        LABELS,
        {"a": 0.5, "b": 0.5},
        max_ap_drop=0.01,
        min_agreement=0.99,
    )
    assert check.accepted, check.reason
    assert check.n_images == 200
    assert check.macro_ap_int8 == pytest.approx(check.macro_ap_float, abs=1e-3)
    assert check.max_probability_diff == pytest.approx(1e-4, abs=1e-6)


def test_an_int8_copy_that_loses_ap_is_refused() -> None:
    probs, targets = _scores()
    worse = probs.copy()
    worse[:, 1] = np.random.default_rng(1).random(len(probs))  # class b is now noise
    check = check_int8(
        probs, worse, targets, LABELS, {"a": 0.5, "b": 0.5}, max_ap_drop=0.01, min_agreement=0.99
    )
    assert not check.accepted
    assert check.reason.startswith("macro AP drops")
    assert check.ap_drop["a"] == 0.0 and check.ap_drop["b"] > 0.01
    assert check.decision_agreement < 1.0


def test_an_int8_copy_that_changes_decisions_is_refused() -> None:
    probs, targets = _scores()
    near = np.full_like(probs, 0.5)  # every score at the threshold: rank kept, decisions not
    moved = near + np.where(probs >= 0.5, -1e-3, 1e-3) * (np.arange(len(probs)) % 10 == 0)[:, None]
    check = check_int8(
        near, moved, targets, LABELS, {"a": 0.5, "b": 0.5}, max_ap_drop=1.0, min_agreement=0.99
    )
    assert not check.accepted
    assert "decisions agree" in check.reason


def test_training_ships_a_checked_int8_copy_that_auto_serves(
    production_model: ModelStore,
) -> None:
    uri = f"models:/{production_model.name}@production"
    reference = load_predictor(uri, backend="torch")
    check = reference.card.serving["int8"]
    assert check["n_images"] > 0 and 0.0 <= check["decision_agreement"] <= 1.0
    assert set(check["ap_drop"]) <= set(reference.labels)

    auto = load_predictor(uri, backend="auto")
    expected = "onnxruntime-int8" if check["accepted"] else "onnxruntime-cpu"
    assert auto.backend == expected

    images = [
        decode_gray(p.read_bytes(), max_pixels=10**7)
        for p in sorted((production_model.images / "JPEGImages").iterdir())
    ]
    int8 = load_predictor(uri, backend="int8") if check["accepted"] else None
    if int8 is not None:
        got, want = int8.predict(images), reference.predict(images)
        cut = np.array([reference.thresholds[k] for k in reference.labels])
        # Quantization moves probabilities a little; decisions at the thresholds hold.
        assert np.abs(got - want).max() < 0.15
        assert ((got >= cut) == (want >= cut)).mean() >= 0.95


def test_a_version_without_an_int8_copy_serves_the_float_graph(
    production_model: ModelStore,
) -> None:
    import mlflow

    from eldefect.registry import configure_mlflow, load_model, log_model, model_uri
    from eldefect.settings import get_settings

    model, card = load_model(model_uri(production_model.name, production_model.v1))
    configure_mlflow(get_settings())
    with mlflow.start_run():
        uri = log_model(model, card)  # no int8_onnx
    assert load_predictor(uri, backend="auto").backend == "onnxruntime-cpu"
    with pytest.raises(RuntimeError, match="has no int8 copy"):
        load_predictor(uri, backend="int8")


def test_an_onnx_copy_naming_external_data_is_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from eldefect.artifact import UnsafeModelError, read_onnx

    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), name="w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
        [weight],
    )
    file = tmp_path / "model.int8.onnx"
    onnx.save_model(
        helper.make_model(graph),
        str(file),
        save_as_external_data=True,
        location="weights.bin",
        size_threshold=0,
    )
    with pytest.raises(UnsafeModelError, match="external data"):
        read_onnx(file)
