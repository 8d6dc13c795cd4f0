"""Train several recipes side by side and compare them: a sweep tool, not part of the product.

Runs `eldefect.train.train` (the real training loop) once per config, in parallel processes,
with a tracker that keeps metrics in memory instead of MLflow (so it also runs on machines
without MLflow, such as a lent GPU). Prints each recipe's curve and its kept model's table.

    python bench/recipe_sweep.py --data ../shared/data/pv-multi-defect \
        --config configs/train/pv_multi_defect.yaml --parallel 1 --device cpu
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class MemoryTracker:
    """Keeps what a run logs, for the sweep's report."""

    def __init__(self) -> None:
        self.curve: list[dict[str, float]] = []
        self.summary: dict[str, float] = {}
        self.texts: dict[str, str] = {}

    @contextmanager
    def run(self, name: str) -> Iterator[str]:
        yield name

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if step is None:
            self.summary |= {k: float(v) for k, v in metrics.items()}
        else:
            self.curve.append({"epoch": step} | {k: float(v) for k, v in metrics.items()})

    def log_dict(self, data: Any, path: str) -> None:
        self.texts[path] = json.dumps(data)

    def log_text(self, text: str, path: str) -> None:
        self.texts[path] = text

    def log_model(self, model: Any, card: Any, *, int8_onnx: bytes | None = None) -> str:
        return "not-saved"


def run_one(args: tuple[str, str, str, int]) -> dict[str, Any]:
    config_path, data, device, threads = args
    import torch

    from eldefect.config import load_train_config
    from eldefect.train import train

    torch.set_num_threads(threads)
    config = load_train_config(Path(config_path))
    tracker = MemoryTracker()
    started = time.perf_counter()
    train(
        config,
        data_root=Path(data),
        device=device,
        progress=False,
        tracker=tracker,
        workdir=Path("var/sweep"),
    )
    return {
        "config": config_path,
        "seconds": time.perf_counter() - started,
        "curve": tracker.curve,
        "summary": tracker.summary,
        "table": tracker.texts.get("val_metrics.txt", ""),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--config", action="append", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per recipe")
    parser.add_argument("--out", default=None, help="Write all results as JSON here.")
    opts = parser.parse_args()

    jobs = [(c, opts.data, opts.device, opts.threads) for c in opts.config]
    with mp.get_context("spawn").Pool(opts.parallel) as pool:
        results = pool.map(run_one, jobs)
    for r in results:
        s = r["summary"]
        print(f"\n=== {r['config']}: {r['seconds'] / 60:.1f} min, kept epoch {s['best_epoch']:.0f}")
        print(" ".join(f"{c['epoch']}:{c['val_macro_ap']:.3f}" for c in r["curve"]))
        print(r["table"])
    print("\nrecipe                                   macroAP  recall(tuned)  recall@0.5  min")
    for r in sorted(results, key=lambda r: -r["summary"]["best_val_macro_ap"]):
        s = r["summary"]
        print(
            f"{Path(r['config']).stem:<40} {s['best_val_macro_ap']:.3f}    "
            f"{s['best_val_macro_recall']:.3f}         {s['best_val_macro_recall_at_0.5']:.3f}"
            f"      {r['seconds'] / 60:.1f}"
        )
    if opts.out:
        Path(opts.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
