"""K-fold cross-validation: out-of-fold predictions, honest thresholds, the card's CV figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from eldefect.cli import cli
from eldefect.config import load_train_config
from eldefect.crossval import cross_validate
from eldefect.metrics import tune_thresholds
from eldefect.registry import load_card
from eldefect.train import train

CONFIG = Path(__file__).parents[2] / "configs/train/synthetic.yaml"


@pytest.mark.slow
def test_every_image_gets_one_out_of_fold_prediction_and_the_card_ships_their_thresholds(
    settings_env: Path,
) -> None:
    config = load_train_config(CONFIG)
    config.optim.epochs = 2
    config.data.synthetic_n = 120
    cv = cross_validate(config, 3, progress=False)

    rows = np.concatenate([f.val_idx for f in cv.folds])
    assert sorted(rows.tolist()) == list(range(120))  # each image validated exactly once
    assert cv.oof_probs.shape == (120, len(cv.labels))
    expected = tune_thresholds(
        cv.oof_probs, cv.oof_targets, cv.labels, recall_floor=config.thresholds.recall_floor
    )
    assert cv.thresholds == expected
    summary = cv.summary()
    assert set(summary) == set(cv.labels)
    assert "ap" in summary["crack"] and summary["crack"]["ap"]["std"] >= 0
    assert "3-fold CV" in cv.report() and "accuracy (every label right)" in cv.report()
    assert cv.accuracy()["at_0.5"]["mean"] == pytest.approx(
        np.mean([((f.probs >= 0.5) == (f.targets > 0)).all(axis=1).mean() for f in cv.folds])
    )

    outcome = train(config, progress=False, cv=cv)
    assert outcome.card.thresholds == cv.thresholds
    card = load_card(outcome.model_uri)
    assert card.cv["folds"] == 3
    assert card.cv["thresholds"] == pytest.approx(cv.thresholds)
    assert set(card.cv["calibration"]["ece"]) == set(cv.labels)
    assert set(card.cv["accuracy"]) == {"at_0.5", "tuned"}


@pytest.mark.slow
def test_train_cv_prints_the_per_class_table(settings_env: Path) -> None:
    result = CliRunner().invoke(
        cli,
        ["train", "--config", str(CONFIG), "--cv", "2", "--no-final", "--epochs", "1"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "2-fold CV" in result.output
    assert "macro" in result.output
