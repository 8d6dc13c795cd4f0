"""The one preprocessing path from a decoded image to model input, for training and serving.

decode (eldefect.imaging) -> resize to the model's square input -> normalise. Training puts
its augmentation between resize and normalise; serving does nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class InputSpec:
    """What a model expects; stored with every registered model."""

    size: int
    mean: float
    std: float
    standardize: bool = False  # each image by its own mean and std instead (InputConfig)


def resize(gray: np.ndarray, size: int) -> torch.Tensor:
    """(H, W) float 0..1 -> (1, size, size) float32, antialiased so thin cracks survive."""
    x = torch.from_numpy(np.ascontiguousarray(gray, dtype=np.float32))[None, None]  # (1,1,H,W)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return x[0].clamp_(0.0, 1.0)  # (1, S, S)


# Keeps an almost uniform image (a dark frame) from being blown up into noise.
_MIN_STD = 0.01


def normalize(x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """(..., S, S) in 0..1 -> model input, by the spec's fixed mean/std or per image."""
    if spec.standardize:
        mean = x.mean(dim=(-2, -1), keepdim=True)
        return (x - mean) / (x.std(dim=(-2, -1), keepdim=True) + _MIN_STD)
    return (x - spec.mean) / spec.std


def preprocess_batch(images: Sequence[np.ndarray], spec: InputSpec) -> torch.Tensor:
    """Decoded grayscale images of any sizes -> one (N, 1, S, S) model input batch."""
    return normalize(torch.stack([resize(img, spec.size) for img in images]), spec)
