"""On the real EL data (ELDEFECT_REAL_DATA; .ci/run sets it, a plain clone skips these)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eldefect.config import load_train_config
from eldefect.data.cache import ImageCache
from eldefect.data.readers import read_elpv, read_voc
from eldefect.labels import load_label_set
from eldefect.train import train

pytestmark = pytest.mark.real_data
CONFIG = Path(__file__).parents[2] / "configs/train/pv_multi_defect.yaml"


def test_pv_multi_defect_quirks_are_counted_not_fatal(real_data: Path) -> None:
    samples, report = read_voc(real_data / "pv-multi-defect", load_label_set("pv_multi_defect"))
    assert report.images == len(list((real_data / "pv-multi-defect/JPEGImages").iterdir()))
    assert len(samples) == report.images - len(report.missing_annotation)
    assert report.missing_annotation, "the data README promises JPEGs without an XML"
    targets = np.stack([s.target for s in samples])
    assert targets.sum(0).min() > 0  # every class is present
    cache = ImageCache.build(samples[:120], 64, max_pixels=10**8, progress=False)
    assert cache.images.shape == (120, 1, 64, 64)


def test_elpv_reads_every_cell(real_data: Path) -> None:
    samples, report = read_elpv(real_data / "elpv", load_label_set("elpv"))
    assert len(samples) == report.images and not report.unreadable_images
    rate = float(np.mean([s.target[0] for s in samples]))
    assert 0.2 < rate < 0.5  # defective (p >= 0.5) is the minority


# Per-class AP of the shipped config over the folds of its 5-fold CV (docs/training.md,
# "Cross-validated figures"): (lowest fold, mean, std). A class's floor is the lower of
# "lowest fold minus MARGIN" and "mean minus two std", clipped at 0: one fold's figure (fold 0
# is the one trained here) says little about `broken`, whose AP moves ~0.1 between seeds, and a
# CI runner without native bf16 trains in fp32.
CV_AP = {
    "hot_spot": (0.905, 0.949, 0.031),
    "scratch": (0.946, 0.968, 0.013),
    "black_border": (0.975, 0.987, 0.006),
    "no_electricity": (0.989, 0.998, 0.005),
    "broken": (0.646, 0.791, 0.102),
}
MARGIN = 0.05


def ap_floor(name: str) -> float:
    lowest, mean, std = CV_AP[name]
    return max(0.0, min(lowest - MARGIN, mean - 2 * std))


@pytest.mark.slow
# 10 to 15 min on 2 cores with bf16; the config's max_minutes (28) bounds a busy or fp32 run,
# which the suite's default 900 s timeout would cut first.
@pytest.mark.timeout(1800)
def test_shipped_config_meets_the_cv_floors_on_a_held_out_fold(
    real_data: Path, settings_env: Path
) -> None:
    """The shipped recipe, trained on four folds, scores each class on the fifth at least as
    well as the cross-validation says it should (10 to 15 min on 2 cores with bf16)."""
    config = load_train_config(CONFIG)
    config.data.folds, config.data.fold = 5, 0
    outcome = train(config, data_root=real_data / "pv-multi-defect", progress=False)
    assert outcome.card.labels == list(CV_AP)
    assert outcome.metrics["peak_rss_mb"] > 0
    aps = {name: m.ap for name, m in outcome.per_class.items()}
    floors = {name: round(ap_floor(name), 3) for name in CV_AP}
    below = {name: (round(ap, 3), floors[name]) for name, ap in aps.items() if ap < floors[name]}
    assert not below, f"AP under its CV floor (AP, floor): {below}; all: {aps}"
