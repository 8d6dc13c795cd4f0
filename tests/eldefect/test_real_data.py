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


@pytest.mark.slow
def test_shipped_config_trains_on_real_data(real_data: Path, settings_env: Path) -> None:
    """Two epochs of the shipped recipe run end to end and log a usable model."""
    config = load_train_config(CONFIG)
    config.optim.epochs = 2
    config.input.size = 96
    outcome = train(config, data_root=real_data / "pv-multi-defect", progress=False)
    assert outcome.card.labels == list(load_label_set("pv_multi_defect").labels)
    assert 0.0 < outcome.metrics["best_val_macro_ap"] <= 1.0
    assert outcome.metrics["peak_rss_mb"] > 0
