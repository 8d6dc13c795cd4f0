"""Decode every image of a dataset once, into resized tensors and input statistics.

Epochs then cost only augmentation and the model, which matters on a 2-core machine.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from eldefect.data.readers import DatasetError, Sample
from eldefect.imaging import ImageDecodeError, decode_gray
from eldefect.preprocess import InputSpec, normalize, resize
from eldefect.stats import input_statistics

log = logging.getLogger(__name__)

# An image whose 90th intensity percentile is below this is "almost fully black".
NEAR_BLACK_P90 = 0.03


@dataclass
class ImageCache:
    images: torch.Tensor  # (N, 1, S, S) float16, 0..1, resized only
    targets: torch.Tensor  # (N, C) float32
    confidences: torch.Tensor  # (N, C) float32: the labellers' confidence, else the targets
    stats: list[dict[str, float]]
    paths: list[Path]
    unreadable: list[str] = field(default_factory=list)
    near_black: list[str] = field(default_factory=list)

    @classmethod
    def build(
        cls, samples: Sequence[Sample], size: int, *, max_pixels: int, progress: bool = True
    ) -> ImageCache:
        images, targets, confidences, stats, paths = [], [], [], [], []
        unreadable, near_black = [], []
        for sample in tqdm(samples, desc="decode", unit="img", disable=not progress):
            try:
                # As the worker decodes for this model: see decode_gray's min_side.
                gray = decode_gray(sample.path.read_bytes(), max_pixels=max_pixels, min_side=size)
            except (OSError, ImageDecodeError) as exc:
                unreadable.append(f"{sample.path.name} ({exc})")
                continue
            row = input_statistics(gray)
            if row["p90"] < NEAR_BLACK_P90:
                near_black.append(sample.path.name)
            images.append(resize(gray, size).to(torch.float16))
            targets.append(torch.from_numpy(sample.target))
            confidence = sample.target if sample.confidence is None else sample.confidence
            confidences.append(torch.from_numpy(confidence))
            stats.append(row)
            paths.append(sample.path)
        if not images:
            raise DatasetError(
                f"none of the dataset's {len(samples)} labelled images could be read"
                if samples
                else "the dataset holds no labelled images (an image and its annotation)"
            )
        if unreadable:
            log.warning("skipped %d unreadable images: %s", len(unreadable), unreadable[:5])
        if near_black:
            log.warning(
                "%d images are almost fully black (p90 < %.2f), kept with their labels: %s",
                len(near_black),
                NEAR_BLACK_P90,
                near_black[:5],
            )
        return cls(
            torch.stack(images),
            torch.stack(targets),
            torch.stack(confidences),
            stats,
            paths,
            unreadable,
            near_black,
        )

    def __len__(self) -> int:
        return len(self.paths)


class CachedDataset(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A view of some cache rows, with optional augmentation, normalised for the model.

    With `confidences` the rows carry the labellers' confidence as their target (a soft label
    for the loss) instead of the 0/1 target.
    """

    def __init__(
        self,
        cache: ImageCache,
        indices: np.ndarray,
        *,
        spec: InputSpec,
        augment: torch.nn.Module | None = None,
        confidences: bool = False,
    ) -> None:
        self.cache, self.indices, self.augment = cache, indices, augment
        self.spec = spec
        self.targets = cache.confidences if confidences else cache.targets

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        j = int(self.indices[i])
        x = self.cache.images[j].float()  # (1, S, S)
        if self.augment is not None:
            x = self.augment(x).clamp_(0.0, 1.0)
        # The same normalise as serving (eldefect.preprocess), after the augmentation.
        return normalize(x, self.spec), self.targets[j]
