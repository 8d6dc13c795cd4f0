"""Training steps per second in fp32 and in bf16 autocast on this CPU: what `optim.precision:
auto` should pick here (eldefect.precision).

    python bench/precision_speed.py --size 300 --stem-stride 4
    python bench/precision_speed.py --size 224

ResNet-18 (one input channel, one output), channels_last, AdamW, a batch of random images;
each round times `--steps` steps after one warm-up and prints their median, alternating fp32
and bf16 rounds so that a machine that slows down mid-run shows in both.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from eldefect.config import ModelConfig
from eldefect.models import build_model
from eldefect.precision import RunPrecision, autocast, bf16_is_fast


def images_per_second(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
    precision: RunPrecision, steps: int,
) -> float:  # fmt: skip
    y = torch.rand(len(x), 1)
    seconds = []
    for _ in range(steps + 1):  # the first step warms oneDNN's kernel cache up
        started = time.perf_counter()
        with autocast(precision, torch.device("cpu")):
            logits = model(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - started)
    return len(x) / statistics.median(seconds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--stem-stride", type=int, choices=(2, 4), default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    opts = parser.parse_args()
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="resnet18", stem_stride=opts.stem_stride), 1)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(opts.batch, 1, opts.size, opts.size).to(memory_format=torch.channels_last)
    rates: dict[RunPrecision, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(opts.rounds):
        for precision in rates:
            rates[precision].append(images_per_second(model, optimizer, x, precision, opts.steps))
    for precision, per_round in rates.items():
        shown = ", ".join(f"{r:.1f}" for r in per_round)
        print(f"{precision}: {shown} images/s per round (mean {statistics.mean(per_round):.1f})")
    ratio = statistics.mean(rates["bf16"]) / statistics.mean(rates["fp32"])
    auto = "bf16" if bf16_is_fast(torch.device("cpu")) else "fp32"
    print(f"bf16 / fp32: {ratio:.2f}; optim.precision auto picks {auto} on this CPU")


if __name__ == "__main__":
    main()
