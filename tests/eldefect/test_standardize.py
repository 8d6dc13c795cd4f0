"""`input.standardize`: each image normalised by its own mean and std, in training and serving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from eldefect.card import ModelCard
from eldefect.config import load_train_config
from eldefect.data.readers import read_voc
from eldefect.imaging import decode_gray
from eldefect.labels import load_label_set
from eldefect.predictor import load_predictor
from eldefect.preprocess import InputSpec, normalize, resize
from eldefect.registry import load_model
from eldefect.train import train

CONFIG = Path(__file__).parents[2] / "configs/train/synthetic.yaml"
SPEC = InputSpec(size=8, mean=0.5, std=0.25, standardize=True)


def test_each_image_is_centred_and_scaled_by_itself_alone() -> None:
    torch.manual_seed(0)
    x = torch.rand(3, 1, 8, 8)
    x[2] = 0.5 * x[0] + 0.2  # the first image, dimmer and with less contrast
    out = normalize(x, SPEC)
    means = out.mean(dim=(-2, -1))
    torch.testing.assert_close(means, torch.zeros_like(means), atol=1e-5, rtol=0)
    # Not a batch statistic: an image comes out the same whatever shares its batch.
    torch.testing.assert_close(normalize(x[1:2], SPEC)[0], out[1])
    # Exposure is gone, but for the small floor under the std (1-2 % here).
    torch.testing.assert_close(out[2], out[0], atol=0.05, rtol=0.03)
    fixed = normalize(x, InputSpec(size=8, mean=0.5, std=0.25))
    assert (fixed[2] - fixed[0]).abs().max() > 0.5  # the fixed mean/std keeps it


def test_a_uniform_frame_stays_finite() -> None:
    out = normalize(torch.full((1, 1, 8, 8), 0.3), SPEC)
    assert torch.isfinite(out).all() and out.abs().max() < 1e-5


def test_cards_without_the_field_read_as_fixed_normalisation() -> None:
    old = ModelCard(["crack"], {"size": 64, "mean": 0.5, "std": 0.25}, {}, "val_macro_ap", 0.9)
    assert old.input_spec == InputSpec(64, 0.5, 0.25, standardize=False)
    new = ModelCard.from_dict(old.to_dict() | {"input": {**old.input, "standardize": True}})
    assert new.input_spec.standardize


@pytest.mark.slow
def test_a_standardised_model_is_served_standardised(settings_env: Path) -> None:
    config = load_train_config(CONFIG)
    config.data.synthetic_n = 60
    config.optim.epochs = 1
    config.input.standardize = True
    outcome = train(config, progress=False)
    assert outcome.card.input["standardize"] is True
    root = settings_env / "synthetic"
    samples, _ = read_voc(root, load_label_set(config.data.labels))
    images = [decode_gray(s.path.read_bytes(), max_pixels=10**7) for s in samples[:6]]
    model, _ = load_model(outcome.model_uri)
    # The shared resize (tested in test_synth_models_preprocess.py); the standardising by hand.
    x = torch.stack([resize(img, config.input.size) for img in images])
    by_hand = (x - x.mean(dim=(-2, -1), keepdim=True)) / (x.std(dim=(-2, -1), keepdim=True) + 0.01)
    with torch.inference_mode():
        expected = torch.sigmoid(model(by_hand)).numpy()
    for backend in ("torch", "onnx"):
        served = load_predictor(outcome.model_uri, backend=backend)
        assert served.spec.standardize
        np.testing.assert_allclose(served.predict(images), expected, atol=1e-4)


def test_a_card_from_a_newer_trainer_is_refused_not_misread() -> None:
    card = ModelCard(
        ["crack"], {"size": 64, "mean": 0.5, "std": 0.25, "equalize": True}, {}, "val_macro_ap", 0.9
    )
    with pytest.raises(ValueError, match=r"does not know \(equalize\).*newer version"):
        _ = card.input_spec
