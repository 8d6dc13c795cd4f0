"""Mixed precision for training: which dtype autocast runs the model in (`optim.precision`).

bf16 roughly doubles ResNet-18 training throughput on CPUs with AMX tiles and on recent GPUs.
Elsewhere it costs: emulated where the CPU has no bf16 at all, and slower than fp32 even where
AVX512-BF16 converts and multiplies natively but AMX is absent (measured on such a Xeon:
ResNet-18 fwd+bwd, batch 32, 300 px through the stride-4 stem, 30.6 images/s in bf16 against
44.5 in fp32; `bench/precision_speed.py` measures it). So `auto` picks bf16 only where it
is fast: AMX on CPUs, bf16 on CUDA.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

from eldefect.config import Precision

RunPrecision = Literal["fp32", "bf16"]  # what `auto` resolves to


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 autocast trains faster than fp32 on `device` (the module's docstring)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.cpu._is_amx_tile_supported())
    return False


def resolve_precision(setting: Precision, device: torch.device) -> RunPrecision:
    if setting == "auto":
        return "bf16" if bf16_is_fast(device) else "fp32"
    return setting


def autocast(
    precision: RunPrecision, device: torch.device
) -> contextlib.AbstractContextManager[object]:
    """The forward pass's context: bf16 autocast (BatchNorm and reductions stay fp32, as
    autocast's op lists say), or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
