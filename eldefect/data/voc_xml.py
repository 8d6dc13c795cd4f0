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


def read_voc_names(path: Path) -> list[str]:
    """The `<object><name>` values of one annotation file (may be empty)."""
    root = ET.parse(path).getroot()
    return [
        (node.findtext("name") or "").strip()
        for node in root.iter("object")
        if (node.findtext("name") or "").strip()
    ]
