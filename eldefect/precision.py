"""Mixed precision for training: which dtype autocast runs the model in (`optim.precision`).

bf16 roughly doubles ResNet-18 training throughput on CPUs with native bf16 (AVX512-BF16 /
AMX) and on recent GPUs; where the hardware lacks it, bf16 is emulated and slower than fp32,
so `auto` picks bf16 only where it is native.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

from eldefect.config import Precision

RunPrecision = Literal["fp32", "bf16"]  # what `auto` resolves to


def bf16_is_native(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve_precision(setting: Precision, device: torch.device) -> RunPrecision:
    if setting == "auto":
        return "bf16" if bf16_is_native(device) else "fp32"
    return setting


def autocast(
    precision: RunPrecision, device: torch.device
) -> contextlib.AbstractContextManager[object]:
    """The forward pass's context: bf16 autocast (BatchNorm and reductions stay fp32, as
    autocast's op lists say), or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
