"""Writing and parsing Pascal VOC annotation files."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class VocObject:
    name: str
    box: tuple[int, int, int, int]  # xmin, ymin, xmax, ymax


def write_voc_xml(
    path: Path, *, filename: str, width: int, height: int, objects: list[VocObject]
) -> None:
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 1)):
        ET.SubElement(size, tag).text = str(value)
    for obj in objects:
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = obj.name
        ET.SubElement(node, "difficult").text = "0"
        box = ET.SubElement(node, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), obj.box, strict=True):
            ET.SubElement(box, tag).text = str(value)
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=False)


def read_voc_objects(path: Path) -> tuple[list[str], list[VocObject]]:
    """The `<object><name>` values of one annotation file (may be empty), and the objects
    among them with a well-formed box (xmin < xmax, ymin < ymax), in file order.

    Raises ET.ParseError for a file that is not XML and ValueError for one that cannot be
    read as an annotation: an encoding expat lacks (GBK), or an object without a name, which
    would otherwise make a labelled defect read as none.
    """
    root = ET.parse(path).getroot()
    names, boxed = [], []
    for node in root.iter("object"):
        name = (node.findtext("name") or "").strip()
        if not name:
            raise ValueError("an <object> without a <name>")
        names.append(name)
        box = _box(node.find("bndbox"))
        if box is not None:
            boxed.append(VocObject(name, box))
    return names, boxed


def read_voc_names(path: Path) -> list[str]:
    """The `<object><name>` values of one annotation file (may be empty)."""
    return read_voc_objects(path)[0]


def _box(node: ET.Element | None) -> tuple[int, int, int, int] | None:
    if node is None:
        return None
    try:
        # Some tools write "12.0"; VOC's own files hold integers.
        xmin, ymin, xmax, ymax = (
            round(float(node.findtext(tag) or "")) for tag in ("xmin", "ymin", "xmax", "ymax")
        )
    except (ValueError, OverflowError):  # not a number, or not a finite one
        return None
    return (xmin, ymin, xmax, ymax) if xmin < xmax and ymin < ymax else None
