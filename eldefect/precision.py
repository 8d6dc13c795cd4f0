"""Mixed precision for training: which dtype autocast runs the model in (`optim.precision`).

bf16 roughly doubles ResNet-18 training throughput on CPUs with AMX tiles and on recent GPUs,
and is emulated (slow) on CPUs without bf16 instructions. With AVX512-BF16 but no AMX it
depends on the make: on a Xeon, ResNet-18 fwd+bwd ran 30.6 images/s in bf16 against 44.5 in
fp32 (batch 32, 300 px, stride-4 stem), while on an AMD EPYC of the Zen 5 generation it ran
60.9 against 29.2 (batch 32, 224 px). So `auto` picks bf16 on AMX and on AMD CPUs with
AVX512-BF16, fp32 elsewhere; `bench/precision_speed.py` measures a new CPU. The choice is
read from the CPU's flags rather than timed at start-up: a few steps timed on a shared
machine gave bf16/fp32 ratios from 0.6 to 1.5 on that Zen 5, and a run must not change
dtype with the machine's load.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Literal

import torch

from eldefect.config import Precision

RunPrecision = Literal["fp32", "bf16"]  # what `auto` resolves to


@functools.cache
def cpu_vendor() -> str:
    """The CPU's vendor_id ("GenuineIntel", "AuthenticAMD"), or "" where /proc/cpuinfo is
    not there to say."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "vendor_id":
            return value.strip()
    return ""


def cpu_bf16_is_fast(has_amx: bool, has_avx512_bf16: bool, vendor: str) -> bool:
    """The measured makes (the module's docstring): AMX, or AVX512-BF16 on AMD."""
    return has_amx or (has_avx512_bf16 and vendor == "AuthenticAMD")


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 autocast trains faster than fp32 on `device` (the module's docstring)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_bf16_is_fast(
            has_amx=bool(torch.cpu._is_amx_tile_supported()),
            has_avx512_bf16=bool(torch.cpu._is_avx512_bf16_supported()),
            vendor=cpu_vendor(),
        )
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
