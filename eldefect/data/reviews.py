"""Reviewed production images as a dataset: which are held back, and the folder layout.

A reviewed job becomes one image in a Pascal VOC folder (`JPEGImages/<job id>.<ext>` with
the stored bytes, `Annotations/<job id>.xml` with one whole-image object per reviewed defect),
so `read_voc` and the one preprocessing function read it like any dataset. The ML core knows
nothing of the database: callers hand in anything shaped like `ReviewedItem`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from eldefect.data.voc_xml import VocObject, write_voc_xml

_SUFFIX = {"png": ".png", "jpeg": ".jpg", "mpo": ".jpg", "tiff": ".tif", "bmp": ".bmp"}


class ReviewedItem(Protocol):
    @property
    def job_id(self) -> str: ...
    @property
    def image(self) -> bytes: ...
    @property
    def format(self) -> str: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def defects(self) -> list[str]: ...
    @property
    def labels(self) -> list[str]: ...


def is_holdout(job_id: str, fraction: float) -> bool:
    """Whether a reviewed job belongs to the production evaluation set (never trained on).

    A hash of the job id, not a random draw: the same job is on the same side in every
    export, every retraining and every process, and the share stays `fraction` as reviews
    accumulate.
    """
    if fraction <= 0:
        return False
    digest = hashlib.sha256(job_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


@dataclass
class ExportReport:
    train: int = 0
    holdout: int = 0
    skipped_label_set: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{self.train} reviewed images for training, {self.holdout} held back"
        if self.skipped_label_set:
            text += f"; {len(self.skipped_label_set)} skipped (reviewed against another label set)"
        return text


def write_review_folders(
    items: Iterable[ReviewedItem],
    *,
    train_dir: Path | None,
    holdout_dir: Path | None,
    holdout_fraction: float,
    labels: Sequence[str] | None = None,
) -> ExportReport:
    """Write reviewed images into a training folder and a held-back folder (VOC layout).

    With `labels`, reviews made against a different label set are skipped: an empty review
    there means "none of *those* defects", not "defect-free" in this label set. A folder
    given as None is not written (its items are only counted).
    """
    report = ExportReport()
    wanted = set(labels) if labels is not None else None
    for folder in (train_dir, holdout_dir):
        if folder is not None:
            (folder / "JPEGImages").mkdir(parents=True, exist_ok=True)
            (folder / "Annotations").mkdir(parents=True, exist_ok=True)
    for item in items:
        if wanted is not None and set(item.labels) != wanted:
            report.skipped_label_set.append(item.job_id)
            continue
        held = is_holdout(item.job_id, holdout_fraction)
        if held:
            report.holdout += 1
        else:
            report.train += 1
        folder = holdout_dir if held else train_dir
        if folder is not None:
            write_reviewed_image(folder, item)
    return report


def write_reviewed_image(folder: Path, item: ReviewedItem) -> Path:
    name = f"{item.job_id}{_SUFFIX.get(item.format.lower(), '.png')}"
    (folder / "JPEGImages" / name).write_bytes(item.image)
    # Image-level labels: one object per defect over the whole image (no boxes are known).
    write_voc_xml(
        folder / "Annotations" / f"{item.job_id}.xml",
        filename=name,
        width=item.width,
        height=item.height,
        objects=[VocObject(defect, (0, 0, item.width, item.height)) for defect in item.defects],
    )
    return folder / "JPEGImages" / name
