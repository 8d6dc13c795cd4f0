"""Decode every image of a dataset once, into resized tensors and input statistics.

Epochs then cost only augmentation and the model, which matters on a 2-core machine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from math import ceil, floor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from eldefect.data.readers import Box, DatasetError, Sample
from eldefect.imaging import ImageDecodeError, decode_gray
from eldefect.preprocess import InputSpec, normalize, resize
from eldefect.stats import input_statistics

log = logging.getLogger(__name__)

Region = tuple[int, int, int, int, int]

# An image whose 90th intensity percentile is below this is "almost fully black".
NEAR_BLACK_P90 = 0.03


@dataclass
class ImageCache:
    images: torch.Tensor  # (N, 1, S, S) float16, 0..1, resized only
    targets: torch.Tensor  # (N, C) float32
    confidences: torch.Tensor  # (N, C) float32: the labellers' confidence, else the targets
    stats: list[dict[str, float]]
    paths: list[Path]
    # Per image, its defects' boxes in the resized image's pixels: (class, y0, y1, x0, x1),
    # rows y0:y1 and columns x0:x1 (the source of `DefectPaste`).
    regions: list[tuple[Region, ...]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    near_black: list[str] = field(default_factory=list)

    @classmethod
    def build(
        cls, samples: Sequence[Sample], size: int, *, max_pixels: int, progress: bool = True
    ) -> ImageCache:
        images, targets, confidences, stats, paths, regions = [], [], [], [], [], []
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
            regions.append(scale_boxes(sample.boxes, size))
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
            regions,
            unreadable,
            near_black,
        )

    def __len__(self) -> int:
        return len(self.paths)


def scale_boxes(boxes: Sequence[Box], size: int) -> tuple[Region, ...]:
    """Boxes in fractions of the image -> (class, y0, y1, x0, x1) in its (size, size) resize,
    widened to whole pixels and kept inside the image; boxes left empty are dropped."""
    out = []
    for cls, xmin, ymin, xmax, ymax in boxes:
        y0, y1 = max(0, floor(ymin * size)), min(size, ceil(ymax * size))
        x0, x1 = max(0, floor(xmin * size)), min(size, ceil(xmax * size))
        if y0 < y1 and x0 < x1:
            out.append((cls, y0, y1, x0, x1))
    return tuple(out)


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
        paste: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
        | None = None,
        confidences: bool = False,
    ) -> None:
        self.cache, self.indices, self.augment, self.paste = cache, indices, augment, paste
        self.spec = spec
        self.targets = cache.confidences if confidences else cache.targets

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        j = int(self.indices[i])
        x = self.cache.images[j].float()  # (1, S, S): a copy of the float16 row, pasted into
        target = self.targets[j]
        if self.paste is not None:
            x, target = self.paste(x, target)
        if self.augment is not None:
            x = self.augment(x).clamp_(0.0, 1.0)
        # The same normalise as serving (eldefect.preprocess), after the augmentation.
        return normalize(x, self.spec), target
