"""What a finished `eldefect train --cv K` run's fold models say without training again:
test-time flips and a per-class temperature.

Each fold's kept model (from the run's MLflow store) scores its own held-out fold, the split
the CV used, in fp32: on the image alone (this reproduces the CV's `fold i/K` figures), and
on the mean of the probabilities over flipped copies. Then one temperature per class is
fitted by log-loss on out-of-fold logits, cross-fitted (each fold's from the other folds), and
the expected calibration error is printed before and after.

    ELDEFECT_VAR_DIR=<cv dir>/var MLFLOW_TRACKING_URI=sqlite:///<cv dir>/mlflow.db \\
        python bench/cv_posthoc.py --config <the CV's config> \\
        --data ../shared/data/pv-multi-defect --folds 5
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import torch

from eldefect.artifact import load_local
from eldefect.config import load_train_config
from eldefect.data.cache import ImageCache
from eldefect.data.split import validation_split
from eldefect.labels import load_label_set
from eldefect.metrics import average_precision, expected_calibration_error
from eldefect.preprocess import normalize
from eldefect.settings import get_settings
from eldefect.train import load_samples

# flip dims of an (N, 1, H, W) batch: none, horizontal, vertical, both
FLIPS: dict[str, list[tuple[int, ...]]] = {
    "plain": [()],
    "hflip": [(), (3,)],
    "all flips": [(), (3,), (2,), (2, 3)],
}


def fit_temperature(logits: np.ndarray, truth: np.ndarray) -> float:
    """The temperature (grid 0.25..4, log-spaced) with the lowest log-loss."""
    grid = np.exp(np.linspace(np.log(0.25), np.log(4.0), 81))
    signs = 2 * truth - 1
    losses = [np.mean(np.logaddexp(0, -signs * logits / t)) for t in grid]
    return float(grid[int(np.argmin(losses))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--folds", type=int, default=5)
    opts = parser.parse_args()
    config, settings = load_train_config(opts.config), get_settings()
    labels = load_label_set(config.data.labels)
    names = list(labels.labels)
    samples, _ = load_samples(config, labels, opts.data, settings.ensure_var_dir())
    cache = ImageCache.build(
        samples, config.input.size, max_pixels=settings.max_image_pixels, progress=False
    )
    targets = cache.targets.numpy()
    spec = config.input.spec()
    runs = {
        r.info.run_name: r
        for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
    }
    k = opts.folds
    probs = {v: np.zeros_like(targets) for v in FLIPS}
    logits = np.zeros_like(targets)
    fold_of = np.zeros(len(targets), dtype=int)
    aps: dict[str, list[list[float]]] = {v: [] for v in FLIPS}
    for i in range(k):
        run = next(r for name, r in runs.items() if name.endswith(f"fold{i}of{k}"))
        with tempfile.TemporaryDirectory() as tmp:
            folder = mlflow.artifacts.download_artifacts(
                run_id=run.info.run_id, artifact_path="model", dst_path=tmp
            )
            model = load_local(Path(folder), f"fold {i}").model.eval()
        _, val_idx = validation_split(
            targets, val_fraction=config.data.val_fraction, seed=config.data.split_seed,
            folds=k, fold=i,
        )  # fmt: skip
        fold_of[val_idx] = i
        x = normalize(cache.images[val_idx].float(), spec)
        with torch.inference_mode():
            out = {
                dims: model(torch.flip(x, dims) if dims else x).float()
                for dims in FLIPS["all flips"]
            }
        logits[val_idx] = out[()].numpy()
        for variant, dims_list in FLIPS.items():
            probs[variant][val_idx] = (
                torch.stack([torch.sigmoid(out[d]) for d in dims_list]).mean(0).numpy()
            )
            aps[variant].append(
                [
                    average_precision(probs[variant][val_idx, c], targets[val_idx, c])
                    for c in range(len(names))
                ]
            )
    print("AP per class, mean ± std over folds, then each fold")
    for variant, rows in aps.items():
        table = np.array(rows)  # (folds, classes)
        cells = "  ".join(
            f"{n} {m:.3f} ± {s:.3f}"
            for n, m, s in zip(names, table.mean(0), table.std(0), strict=True)
        )
        print(f"{variant:>10}: {cells}  macro {table.mean(1).mean():.3f}")
        for i, row in enumerate(table):
            print(f"{'':>10}  fold {i}: " + " ".join(f"{v:.3f}" for v in row))
    print("\nper-class temperature, cross-fitted: ECE (10 bins) before -> after")
    for c, name in enumerate(names):
        calibrated = np.zeros(len(targets))
        for i in range(k):
            held = fold_of == i
            t = fit_temperature(logits[~held, c], targets[~held, c])
            calibrated[held] = 1 / (1 + np.exp(-logits[held, c] / t))
        before = expected_calibration_error(probs["plain"][:, c], targets[:, c])
        after = expected_calibration_error(calibrated, targets[:, c])
        t_all = fit_temperature(logits[:, c], targets[:, c])
        print(f"  {name}: T (all folds) {t_all:.2f}, ECE {before:.3f} -> {after:.3f}")


if __name__ == "__main__":
    main()
