"""Training options aimed at speed and at rare classes: precision, weight EMA, sampling, and
the time budget that shortens the schedule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from eldefect.config import load_train_config
from eldefect.precision import autocast, bf16_is_native, resolve_precision
from eldefect.train import (
    WarmupCosine,
    balanced_sample_weights,
    epochs_within_budget,
    train,
    weight_average,
)

CONFIG = Path(__file__).parents[2] / "configs/train/synthetic.yaml"


def test_auto_precision_is_bf16_only_where_native() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if bf16_is_native(cpu) else "fp32")
    assert resolve_precision("fp32", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"


def test_bf16_autocast_runs_convolutions_in_bf16_and_batchnorm_in_fp32() -> None:
    cpu = torch.device("cpu")
    conv, norm = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)
    x = torch.rand(2, 1, 8, 8)
    with autocast("bf16", cpu):
        y = conv(x)
        assert y.dtype == torch.bfloat16
        assert norm(y.float()).dtype == torch.float32
    with autocast("fp32", cpu):
        assert conv(x).dtype == torch.float32


def test_balanced_weights_follow_each_images_rarest_class() -> None:
    # 8 images, class 0 common (6), class 1 rare (2); image 7 has no positive.
    targets = np.array([[1, 0]] * 5 + [[1, 1], [0, 1], [0, 0]], dtype=np.float32)
    w = balanced_sample_weights(targets)
    assert w[0] == pytest.approx(np.sqrt(8 / 6))
    assert w[5] == w[6] == pytest.approx(np.sqrt(8 / 2))  # the rare class decides
    assert w[7] == pytest.approx(np.sqrt(8 / 1))  # defect-free images are a group too
    assert (w > 0).all()


def test_weight_average_is_an_exponential_moving_average() -> None:
    model = nn.Linear(2, 1)
    ema = weight_average(model, 0.9)
    assert ema is not None and weight_average(model, None) is None
    start = model.weight.detach().clone()
    ema.update_parameters(model)  # the first update copies
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update_parameters(model)
    weight = ema.module.weight
    assert isinstance(weight, torch.Tensor) and torch.allclose(weight, start + 0.1)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("precision", "ema_decay", "sampling"),
    [("fp32", None, "shuffle"), ("bf16", None, "shuffle"), ("bf16", 0.9, "balanced")],
)
def test_the_synthetic_classes_are_learned_with_each_option(
    settings_env: Path, precision: str, ema_decay: float | None, sampling: str
) -> None:
    config = load_train_config(CONFIG)
    config.data.synthetic_n = 200
    config.optim.epochs = 6
    config.optim.precision = precision  # type: ignore[assignment]
    config.optim.ema_decay = ema_decay
    config.optim.sampling = sampling  # type: ignore[assignment]
    outcome = train(config, progress=False)
    assert np.isfinite(outcome.validation.loss)
    # Six short epochs: ~0.71 with each option when written; an untrained model scores the
    # classes' prevalence (~0.2-0.4), so this fails if an option breaks learning.
    assert outcome.metrics["best_val_macro_ap"] >= 0.6, outcome.metrics


def test_the_budget_shortens_the_schedule_to_the_epochs_that_fit() -> None:
    assert epochs_within_budget(36, 1, 2.0, None) == 36  # no budget
    assert epochs_within_budget(36, 1, 0.5, 28) == 36  # 0.5 min per epoch: all 36 fit
    assert epochs_within_budget(36, 1, 2.0, 28) == 14  # 1 done + 13 more in the 26 left
    assert epochs_within_budget(36, 10, 20.0, 28) == 14  # the pace is the mean so far
    assert epochs_within_budget(36, 5, 30.0, 28) == 5  # over budget: stop where it is


def test_a_shortened_schedule_still_decays_to_zero_at_its_new_end() -> None:
    schedule = WarmupCosine(warmup_steps=10, total_steps=100)
    assert schedule(0) == pytest.approx(0.1)  # warming up
    assert schedule(50) == pytest.approx(0.5)
    schedule.total_steps = 60
    assert schedule(30) == pytest.approx(0.5) and schedule(60) == pytest.approx(0.0)


def test_a_run_over_its_budget_ends_its_schedule_and_says_so(settings_env: Path) -> None:
    config = load_train_config(CONFIG)
    config.data.synthetic_n = 40
    config.optim.epochs = 5
    config.optim.max_minutes = 1e-6  # spent by the first epoch
    outcome = train(config, progress=False)
    assert outcome.metrics["epochs_run"] == outcome.metrics["epochs_scheduled"] == 1
