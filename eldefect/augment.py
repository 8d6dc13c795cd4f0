"""EL-appropriate augmentation (training split only), on resized (1, S, S) tensors in 0..1.

Flips, quarter turns and small rotations keep the geometry of cell images; brightness,
contrast and gamma jitter mimic exposure and camera differences between stations; defect
copy-paste gives a rare class more examples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from eldefect.config import AugmentConfig
from eldefect.data.cache import Region


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


def blend_patch(region: torch.Tensor, patch: torch.Tensor, ramp: int = 3) -> None:
    """Write `patch` into `region` (both (1, h, w)) in place without a visible frame: the
    patch is scaled to the brightness of the cell it lands on, and faded in over `ramp`
    pixels, so the model cannot learn "a sharp-edged rectangle" as the defect."""

    def level(x: torch.Tensor) -> torch.Tensor:
        # A high quantile reads the lit cell around a defect, however much of the box it fills.
        return torch.quantile(x.flatten(), 0.9).clamp_min(1e-3)

    gain = (level(region) / level(patch)).clamp(2 / 3, 3 / 2)
    h, w = region.shape[-2:]

    def fade(n: int) -> torch.Tensor:
        steps = torch.arange(n, dtype=region.dtype)
        return (torch.minimum(steps + 1, n - steps) / (ramp + 1)).clamp_(max=1.0)

    alpha = fade(h)[:, None] * fade(w)[None, :]
    region.mul_(1 - alpha).add_(alpha * gain * patch).clamp_(0.0, 1.0)


class DefectPaste:
    """Copy-paste for rare classes: with probability p for class c, a training image gets
    the c boxes of another training image with c, pasted at the same place, and target c.

    Images of one VOC dataset share their geometry (cell strips framed alike), so a crack
    moved to the same spot of another strip lands where cracks occur; what the paste covers
    keeps its labels, the small label noise this trade accepts for more positive contexts.
    A box over half the image is no donor: it would move the whole image, its other defects
    unlabelled (reviewed jobs exported as training data mark the whole image).
    """

    def __init__(
        self,
        images: torch.Tensor,
        regions: Sequence[tuple[Region, ...]],
        donors: Sequence[int],
        probabilities: Mapping[int, float],
    ) -> None:
        self.images = images  # (N, 1, S, S), the cache's
        self.probabilities = dict(probabilities)
        most = images.shape[-1] * images.shape[-2] / 2

        def pastable(region: Region, cls: int) -> bool:
            _cls, y0, y1, x0, x1 = region
            return _cls == cls and (y1 - y0) * (x1 - x0) <= most

        self.sources = {
            cls: [
                (j, boxes) for j in donors if (boxes := [r for r in regions[j] if pastable(r, cls)])
            ]
            for cls in self.probabilities
        }

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`x` (1, S, S) is written in place; `target` is copied before it changes."""
        for cls, p in self.probabilities.items():
            sources = self.sources[cls]
            if not sources or float(torch.rand(1)) >= p:
                continue
            donor, boxes = sources[int(torch.randint(len(sources), ()))]
            for _cls, y0, y1, x0, x1 in boxes:
                blend_patch(x[:, y0:y1, x0:x1], self.images[donor, :, y0:y1, x0:x1].float())
            target = target.clone()
            target[cls] = 1.0
        return x, target


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
