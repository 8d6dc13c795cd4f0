"""`eldefect bench`: CPU serving speed of one model through each backend, as ratios in one run.

Each backend runs the same batches; the figure is the median images/s over `repeats` timed
rounds (machines here are shared and noisy: compare the ratios, not absolute values).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from eldefect.config import ModelConfig
from eldefect.models import build_model
from eldefect.predictor import OnnxRunner, TorchRunner


@dataclass(frozen=True)
class BenchRow:
    backend: str
    images_per_s: float
    max_abs_diff: float  # probabilities vs the eager reference


class _EagerRunner:
    """The plain eager model (contiguous memory format): the baseline."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval()

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> np.ndarray:
        return torch.sigmoid(self.model(x)).numpy()


def _median_rate(run: Callable[[torch.Tensor], np.ndarray], x: torch.Tensor, repeats: int) -> float:
    run(x)  # warm-up: allocators, ONNX Runtime's first-run planning
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(x)
        rates.append(len(x) / (time.perf_counter() - start))
    return statistics.median(rates)


def bench_backends(
    model: torch.nn.Module, *, size: int, batch: int = 16, repeats: int = 7
) -> list[BenchRow]:
    x = torch.randn(batch, 1, size, size, generator=torch.Generator().manual_seed(0))
    eager = _EagerRunner(model)
    reference = eager(x)
    runners: list[tuple[str, Callable[[torch.Tensor], np.ndarray]]] = [
        ("torch eager", eager),
        ("torch channels_last", TorchRunner(model, torch.device("cpu"))),
        ("onnxruntime", OnnxRunner(model, size)),
    ]
    rows = []
    for name, runner in runners:
        rate = _median_rate(runner, x, repeats)
        rows.append(BenchRow(name, rate, float(np.abs(runner(x) - reference).max())))
        if name == "torch channels_last":  # TorchRunner converted the weights in place
            model.to(memory_format=torch.contiguous_format)
    return rows


def untrained_model(arch: str, num_classes: int) -> torch.nn.Module:
    """Speed does not depend on the weights: an untrained model of the same shape will do."""
    return build_model(ModelConfig(arch=arch), num_classes).eval()


def format_rows(rows: list[BenchRow]) -> str:
    base = rows[0].images_per_s
    lines = [f"{'backend':<22}{'images/s':>10}{'vs eager':>10}{'max |dp|':>11}"]
    for r in rows:
        lines.append(
            f"{r.backend:<22}{r.images_per_s:>10.1f}{r.images_per_s / base:>9.2f}x"
            f"{r.max_abs_diff:>11.1e}"
        )
    return "\n".join(lines)
