"""Label sets: an ordered list of class names, loaded from YAML.

Shipped sets live in `eldefect/labelsets/`; a training config names one of them or gives a path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

LABELSET_DIR = Path(__file__).parent / "labelsets"
DEFAULT_LABEL_SET = "pvel_ad"


class LabelSetError(ValueError):
    """A label set file is missing, malformed or has duplicate names."""


@dataclass(frozen=True)
class LabelSet:
    name: str
    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.labels:
            raise LabelSetError(f"label set {self.name!r} has no labels")
        dupes = sorted({n for n in self.labels if self.labels.count(n) > 1})
        if dupes:
            raise LabelSetError(f"label set {self.name!r} repeats {dupes}")

    def __len__(self) -> int:
        return len(self.labels)

    def index(self, label: str) -> int:
        return self.labels.index(label)


def available_label_sets() -> list[str]:
    return sorted(p.stem for p in LABELSET_DIR.glob("*.yaml"))


def load_label_set(name_or_path: str | Path = DEFAULT_LABEL_SET) -> LabelSet:
    """Load a shipped label set by name (`pvel_ad`) or any YAML file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = LABELSET_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise LabelSetError(
            f"no label set {str(name_or_path)!r}: give a YAML path or one of "
            f"{available_label_sets()}"
        )
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise LabelSetError(f"{path}: not a readable YAML file ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("labels"), list):
        raise LabelSetError(f"{path}: expected a mapping with a 'labels' list")
    # A label is matched against annotation names, which are read stripped: " crack" or a
    # number or a mapping (a YAML slip) could never match one.
    odd = [label for label in doc["labels"] if not isinstance(label, str) or not label.strip()
           or label != label.strip()]  # fmt: skip
    if odd:
        raise LabelSetError(
            f"{path}: every label must be a name without surrounding spaces; got {odd}"
        )
    return LabelSet(name=str(doc.get("name", path.stem)), labels=tuple(doc["labels"]))
