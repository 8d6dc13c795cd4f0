"""Training options aimed at speed and at rare classes: precision, weight EMA, sampling, the
focal loss, the time budget that shortens the schedule, and soft targets from labelled
confidences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from eldefect.config import (
    AugmentConfig,
    ConfigError,
    DataConfig,
    InputConfig,
    ModelConfig,
    OptimConfig,
    ServingConfig,
    TrainConfig,
    load_train_config,
)
from eldefect.data.cache import CachedDataset, ImageCache
from eldefect.data.readers import DatasetError, read_elpv
from eldefect.evaluate import evaluate_model
from eldefect.labels import load_label_set
from eldefect.precision import autocast, bf16_is_fast, cpu_bf16_is_fast, resolve_precision
from eldefect.preprocess import InputSpec
from eldefect.train import (
    WarmupCosine,
    balanced_sample_weights,
    check_positives,
    defect_paste,
    epochs_within_budget,
    load_samples,
    positive_weights,
    train,
    weight_average,
)

CONFIG = Path(__file__).parents[2] / "configs/train/synthetic.yaml"


def test_auto_precision_is_bf16_where_it_was_measured_faster() -> None:
    """AMX anywhere, and AVX512-BF16 on AMD (a Zen 5 trained 2.09 times as fast in bf16); not
    AVX512-BF16 on a Xeon without AMX (0.69 times as fast), nor a CPU without bf16."""
    assert cpu_bf16_is_fast(has_amx=True, has_avx512_bf16=True, vendor="GenuineIntel")
    assert cpu_bf16_is_fast(has_amx=False, has_avx512_bf16=True, vendor="AuthenticAMD")
    assert not cpu_bf16_is_fast(has_amx=False, has_avx512_bf16=True, vendor="GenuineIntel")
    assert not cpu_bf16_is_fast(has_amx=False, has_avx512_bf16=False, vendor="AuthenticAMD")
    assert not cpu_bf16_is_fast(has_amx=False, has_avx512_bf16=True, vendor="")


def test_auto_precision_reads_this_cpus_own_flags() -> None:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from")
    words = cpuinfo.read_text().split()
    fast = "amx_tile" in words or ("avx512_bf16" in words and "AuthenticAMD" in words)
    cpu = torch.device("cpu")
    assert bf16_is_fast(cpu) == fast
    assert resolve_precision("auto", cpu) == ("bf16" if fast else "fp32")
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
    ("precision", "ema_decay", "sampling", "focal_gamma", "paste"),
    [
        ("fp32", None, "shuffle", 0.0, {}),
        ("bf16", None, "shuffle", 0.0, {}),
        ("bf16", 0.9, "balanced", 2.0, {}),
        ("bf16", None, "shuffle", 0.0, {"fragment": 0.3, "corner": 0.3}),
    ],
)
def test_the_synthetic_classes_are_learned_with_each_option(
    settings_env: Path,
    precision: str,
    ema_decay: float | None,
    sampling: str,
    focal_gamma: float,
    paste: dict[str, float],
) -> None:
    config = load_train_config(CONFIG)
    config.data.synthetic_n = 200
    config.optim.epochs = 6
    config.augment.paste = paste
    config.optim.precision = precision  # type: ignore[assignment]
    config.optim.ema_decay = ema_decay
    config.optim.sampling = sampling  # type: ignore[assignment]
    config.optim.focal_gamma = focal_gamma
    outcome = train(config, progress=False)
    assert np.isfinite(outcome.validation.loss)
    # Six short epochs: ~0.71 with each option when written; an untrained model scores the
    # classes' prevalence (~0.2-0.4), so this fails if an option breaks learning.
    assert outcome.metrics["best_val_macro_ap"] >= 0.6, outcome.metrics


def test_defect_paste_names_a_class_of_the_label_set_with_boxes_to_paste(tmp_path: Path) -> None:
    config = load_train_config(CONFIG)
    labels = load_label_set(config.data.labels)
    samples, _ = load_samples(config, labels, None, tmp_path)
    cache = ImageCache.build(samples[:40], 96, max_pixels=10**6, progress=False)
    rows = np.arange(len(cache))
    config.augment.paste = {"fragment": 0.5}
    paste = defect_paste(cache, rows, config, labels)
    assert paste is not None and paste.sources[labels.index("fragment")]

    config.augment.paste = {"smudge": 0.5}
    with pytest.raises(ConfigError, match=r"'smudge'.* not in label set"):
        defect_paste(cache, rows, config, labels)
    config.augment.paste = {"scratch": 0.5}  # in the label set, never drawn by the synthesiser
    with pytest.raises(ConfigError, match=r"no training image has a box of .'scratch'"):
        defect_paste(cache, rows, config, labels)
    config.augment.enabled = False
    assert defect_paste(cache, rows, config, labels) is None


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


def write_elpv_folder(root: Path, levels: list[float]) -> Path:
    """An ELPV-layout folder: one small cell per level, brighter the surer its defect."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i, level in enumerate(levels):
        pixels = rng.normal(60 + 120 * level, 20, (32, 32)).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"cell{i:04d}.png")
        lines.append(f"images/cell{i:04d}.png {level} mono")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


LEVELS = [0.0, 1 / 3, 2 / 3, 1.0] * 12


def test_soft_targets_are_the_labelled_confidence_and_only_for_training(tmp_path: Path) -> None:
    root = write_elpv_folder(tmp_path / "elpv", LEVELS[:8])
    samples, _ = read_elpv(root, load_label_set("elpv"))
    cache = ImageCache.build(samples, 32, max_pixels=10**6, progress=False)
    spec = InputSpec(32, 0.5, 0.25)
    soft = CachedDataset(cache, np.arange(8), spec=spec, confidences=True)
    hard = CachedDataset(cache, np.arange(8), spec=spec)
    assert [round(float(soft[i][1]), 3) for i in range(4)] == [0.0, 0.333, 0.667, 1.0]
    assert [float(hard[i][1]) for i in range(4)] == [0.0, 0.0, 1.0, 1.0]


@pytest.mark.slow
def test_soft_targets_on_a_dataset_without_confidences_say_they_do_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = load_train_config(CONFIG)
    config.data.synthetic_n = 10
    config.data.soft_targets = True
    labels = load_label_set(config.data.labels)
    with caplog.at_level("WARNING", logger="eldefect.train"):
        samples, _ = load_samples(config, labels, None, tmp_path)
    assert samples and all(sample.confidence is None for sample in samples)
    assert "training on the 0/1 targets" in caplog.text


def test_a_soft_target_run_is_scored_on_the_0_1_target_and_by_level(
    settings_env: Path, tmp_path: Path
) -> None:
    root = write_elpv_folder(tmp_path / "elpv", LEVELS)
    config = TrainConfig(
        name="elpv-soft",
        data=DataConfig(format="elpv", labels="elpv", val_fraction=0.25, soft_targets=True),
        input=InputConfig(size=32, mean=0.5, std=0.25),
        model=ModelConfig(arch="cnn", width=8, depth=2),
        augment=AugmentConfig(enabled=False),
        optim=OptimConfig(epochs=2, batch_size=8, threads=2),
        serving=ServingConfig(int8=False),
    )
    outcome = train(config, data_root=root, progress=False)
    assert set(np.unique(outcome.validation.targets)) <= {0.0, 1.0}
    val_levels = np.array(LEVELS)[outcome.val_idx]
    assert outcome.per_class["defective"].support == int((val_levels >= 0.5).sum())

    result = evaluate_model(
        outcome.model_uri, root, data_format="elpv", backend="torch", log_to_mlflow=False
    )
    assert result.levels is not None
    assert [(round(r.level, 3), r.count) for r in result.levels] == [
        (0.0, 12),
        (0.333, 12),
        (0.667, 12),
        (1.0, 12),
    ]
    assert 0.0 <= result.accuracy <= 1.0 and "level_accuracy" in result.metrics()
    assert "by labelled confidence" in result.report()


def test_a_split_with_nothing_to_learn_or_to_select_on_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    labels = load_label_set("pv_multi_defect")
    targets = np.zeros((10, len(labels)), np.float32)
    train_idx, val_idx = np.arange(8), np.arange(8, 10)
    with pytest.raises(DatasetError, match="no training image shows any class"):
        check_positives(targets, train_idx, val_idx, labels)
    targets[:8, 0] = 1.0
    with pytest.raises(DatasetError, match="no epoch can be selected"):
        check_positives(targets, train_idx, val_idx, labels)
    targets[9, 0] = 1.0
    with caplog.at_level("WARNING", logger="eldefect.train"):
        check_positives(targets, train_idx, val_idx, labels)
    assert "no training image shows scratch, black_border" in caplog.text


def test_a_synthetic_dataset_is_drawn_again_when_the_config_changes(tmp_path: Path) -> None:
    config = load_train_config(CONFIG)
    config.data.synthetic_n, config.data.synthetic_size = 6, 32
    labels = load_label_set(config.data.labels)
    first, _ = load_samples(config, labels, None, tmp_path)
    again, _ = load_samples(config, labels, None, tmp_path)
    config.data.synthetic_n = 9
    changed, _ = load_samples(config, labels, None, tmp_path)
    assert (len(first), len(again), len(changed)) == (6, 6, 9)


def test_positive_weights_count_the_positives_pasting_adds() -> None:
    # 100 images: class 0 in 4 (rare, pasted at 0.2), class 1 in 25.
    targets = np.zeros((100, 2), dtype=np.float32)
    targets[:4, 0] = 1
    targets[:25, 1] = 1

    plain = positive_weights(targets, max_pos_weight=10)
    pasted = positive_weights(targets, max_pos_weight=10, pasted={0: 0.2})

    assert plain.tolist() == pytest.approx([np.sqrt(96 / 4), np.sqrt(75 / 25)])
    # A draw without the class gets it one time in five: 4 + 0.2 * 96 = 23.2 positives.
    assert pasted.tolist() == pytest.approx([np.sqrt(76.8 / 23.2), np.sqrt(75 / 25)])
