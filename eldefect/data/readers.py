"""Dataset readers: Pascal VOC (multi-label) and ELPV (defective vs functional).

Both return samples with image-level multi-hot targets and a `LoadReport` that counts every
problem found on the way; nothing crashes half-way through a folder.
"""

from __future__ import annotations

import csv
import logging
import math
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from eldefect.data.voc_xml import VocObject, read_voc_objects
from eldefect.labels import LabelSet

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}


Box = tuple[int, float, float, float, float]


class DatasetError(ValueError):
    """The dataset cannot be used as configured (reason in the message)."""


@dataclass(frozen=True)
class Sample:
    path: Path
    target: np.ndarray  # (C,) float32 multi-hot
    # The labellers' confidence per class where the dataset records one (ELPV's defect
    # probability); `target` is it thresholded at 0.5.
    confidence: np.ndarray | None = None
    # Where the annotation marks each defect: (class index, xmin, ymin, xmax, ymax) as
    # fractions of the image's width and height; empty for datasets without boxes.
    boxes: tuple[Box, ...] = ()


@dataclass
class LoadReport:
    """What a reader found, for one summary at the end."""

    images: int = 0
    missing_annotation: list[str] = field(default_factory=list)
    empty_annotation: list[str] = field(default_factory=list)
    bad_annotation: list[str] = field(default_factory=list)
    unknown_labels: Counter[str] = field(default_factory=Counter)
    unreadable_images: list[str] = field(default_factory=list)
    # Entries of the image folder that are not read (other suffixes, subfolders), and
    # annotations with no image of their name: both say a folder is not laid out as assumed.
    not_read: list[str] = field(default_factory=list)
    annotation_without_image: list[str] = field(default_factory=list)

    def merge(self, other: LoadReport) -> None:
        """Add another folder's findings to this report."""
        self.images += other.images
        self.missing_annotation += other.missing_annotation
        self.empty_annotation += other.empty_annotation
        self.bad_annotation += other.bad_annotation
        self.unknown_labels.update(other.unknown_labels)
        self.unreadable_images += other.unreadable_images
        self.not_read += other.not_read
        self.annotation_without_image += other.annotation_without_image

    def log(self, root: Path) -> None:
        """One line for the folder: a warning where something was skipped or not read, so a
        run at --log-level WARNING still says what it left out."""
        skipped = (
            self.missing_annotation or self.bad_annotation or self.unknown_labels
            or self.unreadable_images or self.not_read or self.annotation_without_image
        )  # fmt: skip
        log.log(logging.WARNING if skipped else logging.INFO, "read %s: %s", root, self.summary())

    def summary(self) -> str:
        parts = [f"{self.images} images"]
        for name, items in (
            ("without an annotation file", self.missing_annotation),
            ("with an annotation but no objects (kept as defect-free)", self.empty_annotation),
            ("with an unparsable annotation (skipped)", self.bad_annotation),
            ("unreadable (skipped)", self.unreadable_images),
            (
                f"entries of the image folder not read (images: {sorted(IMAGE_SUFFIXES)})",
                self.not_read,
            ),
            ("annotations without an image", self.annotation_without_image),
        ):
            if items:
                shown = ", ".join(items[:5]) + (" ..." if len(items) > 5 else "")
                parts.append(f"{len(items)} {name}: {shown}")
        if self.unknown_labels:
            parts.append(f"unknown label names: {dict(self.unknown_labels)}")
        return "; ".join(parts)


def read_voc(
    root: Path,
    labels: LabelSet,
    *,
    ignore_unknown_labels: bool = False,
    missing_annotation: str = "skip",
) -> tuple[list[Sample], LoadReport]:
    """Read `root/JPEGImages` + `root/Annotations` (one XML per image).

    An image without an XML is skipped (`missing_annotation="skip"`) or taken as defect-free
    (`"negative"`); an XML with no objects is a defect-free image. Unknown label names raise
    `DatasetError` after the whole folder is read, unless `ignore_unknown_labels`.
    """
    image_dir, ann_dir = root / "JPEGImages", root / "Annotations"
    if not image_dir.is_dir():
        raise DatasetError(f"{root} is not a Pascal VOC folder: {image_dir} is missing")
    report = LoadReport()
    samples: list[Sample] = []
    entries = sorted(image_dir.iterdir())
    images = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    read = set(images)  # a set: a folder holds thousands
    report.not_read = [p.name + ("/" if p.is_dir() else "") for p in entries if p not in read]
    stems = {p.stem for p in images}
    if ann_dir.is_dir():
        report.annotation_without_image = sorted(
            x.name for x in ann_dir.glob("*.xml") if x.stem not in stems
        )
    for path in images:
        report.images += 1
        target = np.zeros(len(labels), np.float32)
        boxes: tuple[Box, ...] = ()
        xml = ann_dir / f"{path.stem}.xml"
        if not xml.is_file():
            report.missing_annotation.append(path.name)
            if missing_annotation == "skip":
                continue
        else:
            try:
                names, objects = read_voc_objects(xml)
            except ET.ParseError:
                report.bad_annotation.append(xml.name)
                continue
            except ValueError as exc:
                report.bad_annotation.append(f"{xml.name} ({exc})")
                continue
            if not names:
                report.empty_annotation.append(xml.name)
            for name in names:
                if name in labels.labels:
                    target[labels.index(name)] = 1.0
                else:
                    report.unknown_labels[name] += 1
            boxes = relative_boxes(path, objects, labels)
        samples.append(Sample(path, target, boxes=boxes))
    if report.unknown_labels and not ignore_unknown_labels:
        raise DatasetError(
            f"{root}: label names not in label set {labels.name!r}: "
            f"{dict(report.unknown_labels)}; fix the label set or set "
            "data.ignore_unknown_labels: true"
        )
    report.log(root)
    return samples, report


def relative_boxes(path: Path, objects: list[VocObject], labels: LabelSet) -> tuple[Box, ...]:
    """The boxes of the label set's classes as fractions of the image's size, read from its
    header (the decoder may reduce a JPEG, and an XML's <size> can be wrong); none where it
    cannot be read."""
    known = [o for o in objects if o.name in labels.labels]
    if not known:
        return ()
    try:
        with Image.open(path) as img:
            width, height = img.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return ()  # the image cache reports it as unreadable
    return tuple(
        (
            labels.index(o.name),
            o.box[0] / width,
            o.box[1] / height,
            o.box[2] / width,
            o.box[3] / height,
        )
        for o in known
    )


def read_elpv(
    root: Path, labels: LabelSet, *, cell_type: str | None = None
) -> tuple[list[Sample], LoadReport]:
    """Read ELPV's `labels.csv` (path, defect probability, cell type); defective = p >= 0.5.

    With `cell_type` ("mono" or "poly") only cells of that type are read.
    """
    if len(labels) != 1:
        raise DatasetError(f"ELPV has one target; label set {labels.name!r} has {len(labels)}")
    csv_path = root / "labels.csv"
    if not csv_path.is_file():
        raise DatasetError(f"{root} is not an ELPV folder: {csv_path} is missing")
    report = LoadReport()
    samples: list[Sample] = []
    types: Counter[str] = Counter()
    try:
        # utf-8-sig: a spreadsheet's "CSV UTF-8" starts with a byte-order mark
        lines = csv_path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{csv_path} is not UTF-8 text ({exc})") from None
    for row in filter(None, csv.reader(lines, delimiter=" ", skipinitialspace=True)):
        report.images += 1
        path = root / row[0]
        try:
            probability = float(row[1])
        except (IndexError, ValueError):
            probability = math.nan
        if not 0.0 <= probability <= 1.0:  # NaN too; a percentage (33) is not a probability
            report.bad_annotation.append(" ".join(row))
            continue
        types[row[2].lower() if len(row) > 2 else "(none)"] += 1
        if cell_type is not None and (len(row) < 3 or row[2].lower() != cell_type):
            report.images -= 1
            continue
        if not path.is_file():
            report.unreadable_images.append(row[0])
            continue
        confidence = np.array([probability], np.float32)
        samples.append(Sample(path, (confidence >= 0.5).astype(np.float32), confidence))
    if not types and report.bad_annotation:  # not one row parsed
        raise DatasetError(
            f"{csv_path}: no line reads as '<image path> <defect probability 0..1> "
            f"[mono|poly]', separated by spaces; the first: {report.bad_annotation[0]!r}"
        )
    if not samples and cell_type is not None and types:
        raise DatasetError(
            f"{csv_path}: no {cell_type!r} cell; the cell types there: {dict(types)}"
        )
    report.log(root)
    return samples, report
