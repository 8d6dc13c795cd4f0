from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from eldefect.config import ModelConfig
from eldefect.data.cache import CachedDataset, ImageCache
from eldefect.data.readers import read_voc
from eldefect.data.synth import DRAWERS, write_synthetic_dataset
from eldefect.imaging import decode_gray
from eldefect.labels import load_label_set
from eldefect.models import build_model
from eldefect.preprocess import InputSpec, preprocess_batch


def test_synthetic_dataset_is_deterministic_per_seed(tmp_path: Path) -> None:
    a = write_synthetic_dataset(tmp_path / "a", n=6, seed=5, size=64, progress=False)
    b = write_synthetic_dataset(tmp_path / "b", n=6, seed=5, size=64, progress=False)
    c = write_synthetic_dataset(tmp_path / "c", n=6, seed=6, size=64, progress=False)
    files = sorted(p.name for p in (a / "JPEGImages").iterdir())
    assert files == sorted(p.name.replace("_6_", "_5_") for p in (c / "JPEGImages").iterdir())

    def read(root: Path, name: str) -> bytes:
        return (root / "JPEGImages" / name).read_bytes()

    assert all(read(a, f) == read(b, f) for f in files)
    assert any(read(a, f) != read(c, f.replace("_5_", "_6_")) for f in files)


def test_synthetic_labels_come_from_the_label_set(tmp_path: Path) -> None:
    assert set(DRAWERS) == set(load_label_set().labels)
    root = write_synthetic_dataset(
        tmp_path, n=40, seed=0, size=64, classes=["crack", "corner"], progress=False
    )
    samples, report = read_voc(root, load_label_set())
    targets = np.stack([s.target for s in samples])
    drawn = {load_label_set().labels[i] for i in np.flatnonzero(targets.sum(0))}
    assert drawn == {"crack", "corner"} and not report.unknown_labels
    with pytest.raises(ValueError, match="no synthetic drawer"):
        write_synthetic_dataset(tmp_path / "x", n=1, classes=["smudge"], progress=False)


@pytest.mark.parametrize("arch", ["cnn", "resnet18"])
def test_models_map_gray_batches_to_logits(arch: str) -> None:
    model = build_model(ModelConfig(arch=arch), num_classes=5).eval()
    x = torch.randn(3, 1, 96, 96).to(memory_format=torch.channels_last)  # (B, 1, H, W)
    with torch.inference_mode():
        assert model(x).shape == (3, 5)


def test_resnet_stride_4_stem_gives_the_stride_2_feature_maps_twice_the_input() -> None:
    stems: dict[int, Any] = {  # torchvision ResNets: their stem's layers by name
        stride: build_model(ModelConfig(arch="resnet18", stem_stride=stride), 5).eval()
        for stride in (2, 4)
    }
    maps = {}
    for stride, size in ((2, 96), (4, 192)):
        model = stems[stride]
        x = torch.randn(2, 1, size, size)
        with torch.inference_mode():
            maps[stride] = model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x)))))
            assert model(x).shape == (2, 5)
    assert maps[2].shape == maps[4].shape == (2, 64, 24, 24)


def test_seed_cnn_shape() -> None:
    model = build_model(ModelConfig(arch="cnn", width=32, depth=3), num_classes=12)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    channels = [(c.in_channels, c.out_channels) for c in convs]
    assert channels == [(1, 32), (32, 64), (64, 128), (128, 256)]


def test_training_and_serving_share_one_preprocessing(tmp_path: Path) -> None:
    root = write_synthetic_dataset(tmp_path, n=3, seed=0, size=80, progress=False)
    samples, _ = read_voc(root, load_label_set())
    spec = InputSpec(size=64, mean=0.5, std=0.25)
    cache = ImageCache.build(samples, spec.size, max_pixels=10**7, progress=False)
    training_view = CachedDataset(cache, np.arange(3), spec=spec)
    served = preprocess_batch(
        [decode_gray(s.path.read_bytes(), max_pixels=10**7) for s in samples], spec
    )
    for i in range(3):
        # The cache stores float16: equal within its precision.
        torch.testing.assert_close(training_view[i][0], served[i], atol=4e-3, rtol=0)
