"""Training: `eldefect train --config FILE` reads top to bottom from `train()`.

Seeded stratified split -> decode once into a cache -> augmented training epochs with binary
cross-entropy (tempered positive weights, optionally focal) and AdamW under a warm-up +
cosine schedule -> validation every epoch, early stopping on the selection metric, best weights
restored -> per-class thresholds on validation -> everything logged to MLflow with the model
and its card.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import resource
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, WeightedRandomSampler
from tqdm import tqdm

from eldefect.augment import DefectPaste, build_augmentation
from eldefect.card import ModelCard
from eldefect.config import ConfigError, DataConfig, TrainConfig
from eldefect.data.cache import CachedDataset, ImageCache
from eldefect.data.readers import DatasetError, LoadReport, Sample, read_elpv, read_voc
from eldefect.data.split import validation_split
from eldefect.data.synth import write_synthetic_dataset
from eldefect.labels import LabelSet, load_label_set
from eldefect.losses import FocalBCE
from eldefect.metrics import (
    ClassMetrics,
    format_table,
    macro,
    per_class_metrics,
    tune_thresholds,
)
from eldefect.models import build_model
from eldefect.precision import RunPrecision, autocast, resolve_precision
from eldefect.preprocess import normalize
from eldefect.quantize import Int8Check, int8_copy
from eldefect.settings import Settings, get_settings
from eldefect.stats import feature_profile
from eldefect.tracking import MlflowTracker, Tracker

if TYPE_CHECKING:
    from eldefect.crossval import CrossValidation

log = logging.getLogger(__name__)


@dataclass
class EpochResult:
    loss: float
    probs: np.ndarray  # (N, C)
    targets: np.ndarray  # (N, C)


@dataclass
class TrainOutcome:
    run_id: str
    model_uri: str
    card: ModelCard
    metrics: dict[str, float]
    per_class: dict[str, ClassMetrics]
    best_epoch: int
    validation: EpochResult  # the kept model on the validation split
    val_idx: np.ndarray  # rows of the dataset (in reading order) that split holds


def load_samples(
    config: TrainConfig, labels: LabelSet, data_root: Path | None, workdir: Path
) -> tuple[list[Sample], LoadReport]:
    data = config.data
    root = data_root or data.root
    if data.format == "synthetic":
        root = root or workdir / "synthetic"
        synthetic_dataset(root, data)
    if root is None:
        raise ConfigError("no dataset folder: give --data DIR or data.root in the config")
    samples, report = read_folder(data, data.format, root, labels, cell_type=data.cell_type)
    for source in data.sources:
        more, more_report = read_folder(
            data, source.format, source.root, labels, cell_type=source.cell_type
        )
        log.info("source %s: %s", source.root, more_report.summary())
        samples += more
        report.merge(more_report)
    if data.soft_targets and all(sample.confidence is None for sample in samples):
        log.warning(
            "data.soft_targets is set, but no image here records a labelled confidence "
            "(only ELPV's labels do): training on the 0/1 targets"
        )
    return samples, report


def synthetic_dataset(root: Path, data: DataConfig) -> None:
    """Draw the config's synthetic dataset into `root`, unless it is there already. A folder
    drawn with other parameters (its `synthetic.json` says) is drawn again: reusing it would
    ignore the config without a word."""
    params: dict[str, Any] = {  # write_synthetic_dataset's own arguments
        "n": data.synthetic_n,
        "seed": data.split_seed,
        "size": data.synthetic_size,
        "classes": data.synthetic_classes,
    }
    stamp = root / "synthetic.json"
    if (root / "JPEGImages").is_dir():
        if not stamp.is_file() or json.loads(stamp.read_text()) == params:
            return  # the one asked for, or a folder of someone else's to use as it is
        log.info("drawing %s again: the config's synthetic parameters changed", root)
        for sub in ("JPEGImages", "Annotations"):
            shutil.rmtree(root / sub, ignore_errors=True)
    write_synthetic_dataset(root, **params)
    stamp.write_text(json.dumps(params))


def read_folder(
    data: DataConfig, fmt: str, root: Path, labels: LabelSet, *, cell_type: str | None
) -> tuple[list[Sample], LoadReport]:
    """One labelled folder, read by its format's reader (the config's reader options)."""
    if fmt == "elpv":
        return read_elpv(root, labels, cell_type=cell_type)
    return read_voc(
        root,
        labels,
        ignore_unknown_labels=data.ignore_unknown_labels,
        missing_annotation=data.missing_annotation,
    )


def check_positives(
    targets: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray, labels: LabelSet
) -> None:
    """Refuse a split nothing can be learnt or selected on, and name the classes that will
    not be learnt. Every selection metric averages over the classes with validation
    positives: with none, every epoch scores NaN and the untrained weights would be kept."""
    train_pos, val_pos = targets[train_idx].sum(0), targets[val_idx].sum(0)
    if not train_pos.any():
        raise DatasetError(
            f"no training image shows any class of label set {labels.name!r}: nothing to "
            "learn (are these the dataset's own label names?)"
        )
    if not val_pos.any():
        raise DatasetError(
            f"no validation image ({len(val_idx)}) shows any class: no epoch can be selected; "
            "raise data.val_fraction or add images with defects"
        )
    absent = [name for name, count in zip(labels.labels, train_pos, strict=True) if not count]
    if absent:
        log.warning(
            "no training image shows %s: not learnt (AP undefined, default threshold)",
            ", ".join(absent),
        )


def positive_weights(
    targets: np.ndarray, max_pos_weight: float, pasted: Mapping[int, float] | None = None
) -> torch.Tensor:
    """sqrt(negatives / positives) per class, clamped: tempered, so rare classes are heard
    without the loss being dominated by a handful of images.

    `pasted` (class -> probability, `augment.paste`) counts the positives the loss will see:
    a draw without the class gets it with that probability. Counted on the data alone, the
    weight would boost a class that pasting has already made common, twice over.
    """
    pos = targets.sum(0).astype(np.float64)
    for cls, p in (pasted or {}).items():
        pos[cls] += p * (len(targets) - pos[cls])
    neg = len(targets) - pos
    return torch.tensor(
        np.clip(np.sqrt(neg / np.maximum(pos, 1)), 1.0, max_pos_weight), dtype=torch.float32
    )


def balanced_sample_weights(targets: np.ndarray) -> np.ndarray:
    """Each image's draw weight: sqrt(N / count) of its rarest positive class (images without
    a positive count as one more class). Tempered like the positive weights, so 50 `broken`
    images are drawn ~3.5x as often as a common class, not 13x over and over."""
    counts = targets.sum(0)  # (C,)
    n = len(targets)
    none = max(1.0, float((targets.sum(1) == 0).sum()))
    per_class = np.sqrt(n / np.maximum(counts, 1))  # (C,)
    rarest = np.where(targets > 0, per_class, 0.0).max(1)  # (N,)
    return np.where(targets.sum(1) > 0, rarest, np.sqrt(n / none))


def weight_average(model: nn.Module, decay: float | None) -> AveragedModel | None:
    """The EMA of `model`'s weights and BatchNorm statistics, updated after every step."""
    if decay is None:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    *,
    epoch: int,
    progress: bool,
    precision: RunPrecision = "fp32",
    ema: AveragedModel | None = None,
) -> tuple[float, float]:
    """One pass over the training split; returns (mean loss, images per second)."""
    model.train()
    total, seen, start = 0.0, 0, time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}", unit="batch", leave=False, disable=not progress)
    for x, y in bar:
        x = x.to(device, memory_format=torch.channels_last)  # (B, 1, S, S)
        y = y.to(device)  # (B, C)
        with autocast(precision, device):
            logits = model(x)
        loss = criterion(logits.float(), y)  # the loss in fp32 whatever the forward ran in
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        total += loss.item() * len(x)
        seen += len(x)
        bar.set_postfix(loss=f"{total / seen:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
    return total / seen, seen / (time.perf_counter() - start)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    device: torch.device,
    precision: RunPrecision = "fp32",
) -> EpochResult:
    model.eval()
    losses, probs, targets = [], [], []
    for x, y in loader:
        with autocast(precision, device):
            logits = model(x.to(device, memory_format=torch.channels_last)).float()
        losses.append(criterion(logits, y.to(device)).item() * len(x))
        probs.append(torch.sigmoid(logits).float().cpu())
        targets.append(y)
    n = sum(len(t) for t in targets)
    return EpochResult(sum(losses) / n, torch.cat(probs).numpy(), torch.cat(targets).numpy())


def score(
    result: EpochResult, labels: LabelSet, config: TrainConfig
) -> tuple[dict[str, float], dict[str, float]]:
    """Validation metrics (prefixed val_) and the thresholds tuned on this result."""
    names = list(labels.labels)
    thresholds = tune_thresholds(
        result.probs,
        result.targets,
        names,
        recall_floor=config.thresholds.recall_floor,
        default=config.thresholds.default,
    )
    tuned = per_class_metrics(result.probs, result.targets, names, thresholds)
    at_half = per_class_metrics(result.probs, result.targets, names, dict.fromkeys(names, 0.5))
    metrics = {
        "val_loss": result.loss,
        "val_macro_ap": macro(tuned, "ap"),
        "val_macro_recall": macro(tuned, "recall"),
        "val_macro_precision": macro(tuned, "precision"),
        "val_macro_f1": macro(tuned, "f1"),
        "val_macro_recall_at_0.5": macro(at_half, "recall"),
        "val_macro_f1_at_0.5": macro(at_half, "f1"),
    }
    return metrics, thresholds


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    # ru_maxrss is in KiB on Linux.
    peak = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        peak["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


@dataclass
class WarmupCosine:
    """Linear warm-up to the base learning rate, then cosine decay to zero, per step.

    A `LambdaLR` factor; `total_steps` may be shortened while training runs (see
    `epochs_within_budget`), and the decay then ends at the new last step.
    """

    warmup_steps: int
    total_steps: int

    def __call__(self, step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, self.warmup_steps))
        return warm * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, self.total_steps))))


def epochs_within_budget(
    planned: int, done: int, elapsed_minutes: float, max_minutes: float | None
) -> int:
    """How many epochs the run can complete within `max_minutes` at its pace so far.

    Never more than planned, never fewer than done. Shortening the schedule instead of
    cutting it off keeps the learning-rate decay, which the kept epoch depends on: a run
    stopped mid-schedule keeps a model trained at a high learning rate.
    """
    if max_minutes is None or done == 0:
        return planned
    per_epoch = elapsed_minutes / done
    return max(done, min(planned, done + int((max_minutes - elapsed_minutes) / per_epoch)))


def defect_paste(
    cache: ImageCache, train_idx: np.ndarray, config: TrainConfig, labels: LabelSet
) -> DefectPaste | None:
    """`augment.paste` over the training split's images, or None where it names no class."""
    if not config.augment.enabled or not config.augment.paste:
        return None
    unknown = sorted(set(config.augment.paste) - set(labels.labels))
    if unknown:
        raise ConfigError(f"augment.paste: {unknown} not in label set {labels.name!r}")
    probabilities = {labels.index(name): p for name, p in config.augment.paste.items()}
    paste = DefectPaste(cache.images, cache.regions, train_idx.tolist(), probabilities)
    donors = {labels.labels[cls]: len(sources) for cls, sources in paste.sources.items()}
    if not all(donors.values()):
        empty = sorted(name for name, count in donors.items() if not count)
        raise ConfigError(f"augment.paste: no training image has a box of {empty}")
    log.info("augment.paste: training images with boxes to paste %s", donors)
    return paste


def data_loaders(
    cache: ImageCache,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    config: TrainConfig,
    paste: DefectPaste | None = None,
) -> tuple[DataLoader, DataLoader]:
    spec = config.input.spec()
    augment = build_augmentation(config.augment)  # training split only
    train_ds = CachedDataset(
        cache,
        train_idx,
        spec=spec,
        augment=augment,
        paste=paste,
        confidences=config.data.soft_targets,
    )
    val_ds = CachedDataset(cache, val_idx, spec=spec)
    batch = config.optim.batch_size
    generator = torch.Generator().manual_seed(config.optim.seed)
    sampler = None
    if config.optim.sampling == "balanced":
        weights = balanced_sample_weights(cache.targets.numpy()[train_idx])
        sampler = WeightedRandomSampler(weights.tolist(), len(train_idx), generator=generator)
    train_loader = DataLoader(
        train_ds,
        batch,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=len(train_ds) > batch,  # a batch of 1 would break BatchNorm
        generator=generator,
    )
    return train_loader, DataLoader(val_ds, batch * 2)


def reference_profile(
    cache: ImageCache,
    train_idx: np.ndarray,
    labels: LabelSet,
    val_probs: np.ndarray,
    thresholds: dict[str, float],
) -> dict[str, object]:
    """What drift is measured against: the input statistics of the training images, and what
    the kept model predicts on the validation images at its tuned thresholds.

    Prediction drift compares serving's predicted positive rate with `predicted_positive_rates`,
    not with the ground-truth `positive_rates`: serving produces predictions, and a model's
    errors shift its predicted rate away from the prevalence. Validation images, not training
    ones, because the model has fitted the latter.
    """
    names = list(labels.labels)
    rates = cache.targets.numpy()[train_idx].mean(0).tolist()
    cut = np.array([thresholds.get(name, 0.5) for name in names])  # as Predictor does
    predicted = (val_probs >= cut).mean(0).tolist()  # (N, C) >= (C,) -> (C,)
    return {
        "features": feature_profile([cache.stats[i] for i in train_idx]),
        "positive_rates": dict(zip(names, rates, strict=True)),
        "n_images": len(train_idx),
        "predicted_positive_rates": dict(zip(names, predicted, strict=True)),
        "mean_probabilities": dict(zip(names, val_probs.mean(0).tolist(), strict=True)),
        "n_validation_images": len(val_probs),
    }


def train(
    config: TrainConfig,
    *,
    data_root: Path | None = None,
    settings: Settings | None = None,
    device: str = "cpu",
    progress: bool = True,
    workdir: Path | None = None,
    tracker: Tracker | None = None,
    cv: CrossValidation | None = None,
) -> TrainOutcome:
    """Train, keep the best epoch, log it with its card; `cv` brings thresholds tuned on
    out-of-fold predictions (and the CV figures for the card) in place of this split's."""
    settings = settings or get_settings()
    tracker = tracker or MlflowTracker(settings)
    torch.manual_seed(config.optim.seed)
    np.random.seed(config.optim.seed)
    if config.optim.threads:
        torch.set_num_threads(config.optim.threads)
    dev = torch.device(device)
    labels = load_label_set(config.data.labels)
    names = list(labels.labels)

    # Data: read, split, decode once.
    samples, report = load_samples(config, labels, data_root, workdir or settings.ensure_var_dir())
    cache = ImageCache.build(
        samples, config.input.size, max_pixels=settings.max_image_pixels, progress=progress
    )
    targets = cache.targets.numpy()  # (N, C)
    train_idx, val_idx = validation_split(
        targets,
        val_fraction=config.data.val_fraction,
        seed=config.data.split_seed,
        folds=config.data.folds,
        fold=config.data.fold,
    )
    check_positives(targets, train_idx, val_idx, labels)
    paste = defect_paste(cache, train_idx, config, labels)
    train_loader, val_loader = data_loaders(cache, train_idx, val_idx, config, paste)
    precision = resolve_precision(config.optim.precision, dev)
    log.info(
        "precision %s (optim.precision %s); data: %s; %d train / %d val; positives train %s val %s",
        precision,
        config.optim.precision,
        report.summary(),
        len(train_idx),
        len(val_idx),
        targets[train_idx].sum(0).astype(int).tolist(),
        targets[val_idx].sum(0).astype(int).tolist(),
    )

    # Model, loss, optimiser, schedule.
    model = build_model(config.model, len(labels)).to(dev).to(memory_format=torch.channels_last)
    pasted = paste.probabilities if paste is not None else None
    pos_weight = positive_weights(targets[train_idx], config.optim.max_pos_weight, pasted).to(dev)
    criterion = FocalBCE(pos_weight, config.optim.focal_gamma)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay
    )
    steps_per_epoch = len(train_loader)
    schedule = WarmupCosine(
        warmup_steps=int(config.optim.warmup_epochs * steps_per_epoch),
        total_steps=config.optim.epochs * steps_per_epoch,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    ema = weight_average(model, config.optim.ema_decay)
    kept = ema.module if ema is not None else model  # what is validated and shipped
    metric = config.optim.selection_metric
    best_value, best_epoch, best_state = -math.inf, 0, copy.deepcopy(kept.state_dict())
    best_thresholds: dict[str, float] = {}
    started = time.perf_counter()
    with tracker.run(config.name) as run_id:
        tracker.log_params(
            _flat_params(config)
            | {
                "pos_weight": json.dumps([round(w, 3) for w in pos_weight.tolist()]),
                "n_train": len(train_idx),
                "n_val": len(val_idx),
                "precision_used": precision,
            }
        )
        tracker.log_dict(config.model_dump(mode="json"), "config.json")
        tracker.log_text(report.summary(), "dataset_report.txt")

        planned = config.optim.epochs
        bar = tqdm(total=planned, desc="train", unit="epoch", disable=not progress)
        epoch = 0
        while epoch < planned:
            epoch += 1
            train_loss, throughput = train_one_epoch(
                model, train_loader, criterion, optimizer, scheduler, dev,
                epoch=epoch, progress=progress, precision=precision, ema=ema,
            )  # fmt: skip
            result = evaluate(kept, val_loader, criterion, dev, precision)
            metrics, thresholds = score(result, labels, config)
            metrics |= {"train_loss": train_loss, "train_images_per_s": throughput}
            tracker.log_metrics(metrics, step=epoch)
            if metrics[metric] > best_value:
                best_value, best_epoch, best_thresholds = metrics[metric], epoch, thresholds
                best_state = copy.deepcopy(kept.state_dict())
            bar.update()
            bar.set_postfix(loss=f"{train_loss:.4f}", best=f"{best_value:.4f}@{best_epoch}")
            log.info(
                "epoch %d: train_loss %.4f val_loss %.4f %s %.4f (best %.4f @ %d) %.1f img/s",
                epoch, train_loss, metrics["val_loss"], metric, metrics[metric],
                best_value, best_epoch, throughput,
            )  # fmt: skip
            if epoch >= config.optim.min_epochs and epoch - best_epoch >= config.optim.patience:
                log.info("early stop: no %s gain for %d epochs", metric, config.optim.patience)
                break
            minutes = (time.perf_counter() - started) / 60
            fitted = epochs_within_budget(planned, epoch, minutes, config.optim.max_minutes)
            if fitted < planned:
                log.info(
                    "max_minutes=%s: at %.1f min per epoch %d of %d epochs fit; "
                    "the learning-rate schedule now ends at epoch %d",
                    config.optim.max_minutes, minutes / epoch, fitted, planned, fitted,
                )  # fmt: skip
                planned, bar.total = fitted, fitted
                schedule.total_steps = planned * steps_per_epoch
        bar.close()

        # The kept model: the best epoch's weights, scored again so every number is its own.
        # In fp32, as it is served: its thresholds and figures must hold for those probabilities.
        kept.load_state_dict(best_state)
        final = evaluate(kept, val_loader, criterion, dev)
        final_metrics, _ = score(final, labels, config)
        if cv is not None:
            best_thresholds = dict(cv.thresholds)
        per_class = per_class_metrics(final.probs, final.targets, names, best_thresholds)
        at_half = per_class_metrics(final.probs, final.targets, names, dict.fromkeys(names, 0.5))
        summary = {f"best_{k}": v for k, v in final_metrics.items()} | {
            "best_epoch": best_epoch,
            "epochs_run": epoch,
            "epochs_scheduled": planned,
            "train_minutes": (time.perf_counter() - started) / 60,
        }
        summary |= peak_memory_mb(dev)
        for name, m in per_class.items():
            summary[f"best_val_ap_{name}"] = m.ap
            summary[f"best_val_recall_{name}"] = m.recall
            summary[f"best_val_precision_{name}"] = m.precision
        tracker.log_metrics(summary)
        table = (
            format_table(per_class, "validation, tuned thresholds")
            + "\n\n"
            + format_table(at_half, "validation, threshold 0.5")
        )
        tracker.log_text(table, "val_metrics.txt")
        tracker.log_dict(best_thresholds, "thresholds.json")
        tracker.log_dict({"labels": names}, "labels.json")
        profile = reference_profile(cache, train_idx, labels, final.probs, best_thresholds)
        tracker.log_dict(profile, "reference_profile.json")
        cpu_model = kept.to("cpu").to(memory_format=torch.contiguous_format)
        int8_graph, serving = None, {}
        if config.serving.int8:
            int8_graph, check = int8_for_serving(
                cpu_model, cache, train_idx, val_idx, final, names, best_thresholds, config
            )
            serving = {"int8": check.to_dict()}
            tracker.log_metrics({"int8_macro_ap": check.macro_ap_int8})
        card = ModelCard(
            labels=names,
            input=asdict(config.input.spec()),
            thresholds=best_thresholds,
            selection_metric=metric,
            selection_value=float(final_metrics[metric]),
            profile=profile,
            config=config.model_dump(mode="json"),
            cv=cv.card_summary() if cv is not None else {},
            serving=serving,
        )
        model_uri = tracker.log_model(cpu_model, card, int8_onnx=int8_graph)
    log.info("%s\n\nkept epoch %d; model %s", table, best_epoch, model_uri)
    return TrainOutcome(run_id, model_uri, card, summary, per_class, best_epoch, final, val_idx)


def int8_for_serving(
    model: nn.Module,
    cache: ImageCache,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    final: EpochResult,
    names: list[str],
    thresholds: dict[str, float],
    config: TrainConfig,
) -> tuple[bytes, Int8Check]:
    """The kept model quantized to int8 on training images, checked on the validation split."""
    spec = config.input.spec()
    rng = np.random.default_rng(config.optim.seed)
    picked = rng.choice(train_idx, min(len(train_idx), config.serving.calibration_images), False)

    def inputs(rows: np.ndarray) -> np.ndarray:
        return normalize(cache.images[rows].float(), spec).numpy()

    return int8_copy(
        model,
        inputs(picked),
        inputs(val_idx),  # the order final.probs was scored in (DataLoader without shuffle)
        final.probs,
        final.targets,
        names,
        thresholds,
        max_ap_drop=config.serving.int8_max_ap_drop,
        min_agreement=config.serving.int8_min_agreement,
    )


def _flat_params(config: TrainConfig) -> dict[str, str]:
    out: dict[str, str] = {}
    for section, values in config.model_dump(mode="json").items():
        if isinstance(values, dict):
            out |= {f"{section}.{k}": str(v)[:250] for k, v in values.items()}
        else:
            out[section] = str(values)
    return out
