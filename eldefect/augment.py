"""EL-appropriate augmentation (training split only), on resized (1, S, S) tensors in 0..1.

Flips, quarter turns and small rotations keep the geometry of cell images; brightness,
contrast and gamma jitter mimic exposure and camera differences between stations.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from eldefect.config import AugmentConfig


class RandomGamma(torch.nn.Module):
    def __init__(self, spread: float) -> None:
        super().__init__()
        self.spread = spread

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gamma = float(torch.empty(1).uniform_(1 - self.spread, 1 + self.spread))
        return TF.adjust_gamma(x, gamma)


class RandomQuarterTurn(torch.nn.Module):
    """A 90-degree turn, clockwise or not, with probability `p`; with both flips this
    reaches all eight symmetries of a square cell."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(torch.rand(1)) >= self.p:
            return x
        return torch.rot90(x, k=1 if float(torch.rand(1)) < 0.5 else 3, dims=(-2, -1))


def build_augmentation(config: AugmentConfig) -> v2.Compose | None:
    if not config.enabled:
        return None
    steps: list[torch.nn.Module] = [
        v2.RandomHorizontalFlip(config.hflip),
        v2.RandomVerticalFlip(config.vflip),
    ]
    if config.quarter_turn:
        steps.append(RandomQuarterTurn(config.quarter_turn))
    if config.rotate_degrees:
        steps.append(
            v2.RandomRotation(config.rotate_degrees, interpolation=v2.InterpolationMode.BILINEAR)
        )
    if config.brightness or config.contrast:
        steps.append(v2.ColorJitter(brightness=config.brightness, contrast=config.contrast))
    if config.gamma:
        steps.append(RandomGamma(config.gamma))
    return v2.Compose(steps)
