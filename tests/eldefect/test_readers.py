from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eldefect.data.readers import DatasetError, read_elpv, read_voc
from eldefect.data.voc_xml import VocObject, write_voc_xml
from eldefect.labels import LabelSet

LABELS = LabelSet("t", ("crack", "finger"))


def _voc(root: Path, items: dict[str, list[str] | None]) -> Path:
    """items: image stem -> object names (None: no XML written)."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    for stem, names in items.items():
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "JPEGImages" / f"{stem}.png")
        if names is not None:
            objects = [VocObject(n, (0, 0, 4, 4)) for n in names]
            write_voc_xml(
                root / "Annotations" / f"{stem}.xml",
                filename=stem,
                width=8,
                height=8,
                objects=objects,
            )
    return root


def test_voc_targets_and_counted_quirks(tmp_path: Path) -> None:
    root = _voc(tmp_path, {"a": ["crack", "crack"], "b": ["finger", "crack"], "c": [], "d": None})
    (root / "Annotations" / "e.xml").write_text("<annotation><object>")  # broken XML
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "JPEGImages" / "e.png")

    samples, report = read_voc(root, LABELS)
    targets = {s.path.stem: s.target.tolist() for s in samples}
    assert targets == {"a": [1, 0], "b": [1, 1], "c": [0, 0]}
    assert report.missing_annotation == ["d.png"]
    assert report.empty_annotation == ["c.xml"]
    assert report.bad_annotation == ["e.xml"]
    assert "1 without an annotation file" in report.summary()


def test_voc_boxes_are_fractions_of_the_image_and_malformed_ones_are_dropped(
    tmp_path: Path,
) -> None:
    root = tmp_path / "voc"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    Image.fromarray(np.zeros((50, 200), np.uint8)).save(root / "JPEGImages" / "a.png")
    # The XML's <size> is wrong on purpose: the image's own size is what counts.
    (root / "Annotations" / "a.xml").write_text(
        "<annotation><size><width>8</width><height>8</height></size>"
        "<object><name>finger</name><bndbox><xmin>20</xmin><ymin>5.0</ymin>"
        "<xmax>100</xmax><ymax>50</ymax></bndbox></object>"
        "<object><name>crack</name><bndbox><xmin>9</xmin><ymin>1</ymin>"
        "<xmax>3</xmax><ymax>4</ymax></bndbox></object>"  # xmax < xmin
        "<object><name>crack</name><bndbox><xmin>x</xmin></bndbox></object>"
        "<object><name>crack</name></object></annotation>"
    )

    (sample,), _ = read_voc(root, LABELS)

    assert sample.target.tolist() == [1, 1]  # every object names a class, boxed or not
    assert sample.boxes == ((1, 0.1, 0.1, 0.5, 1.0),)


def test_missing_annotation_can_mean_defect_free(tmp_path: Path) -> None:
    samples, _ = read_voc(_voc(tmp_path, {"d": None}), LABELS, missing_annotation="negative")
    assert [s.target.tolist() for s in samples] == [[0, 0]]


def test_unknown_labels_fail_after_the_whole_folder_unless_ignored(tmp_path: Path) -> None:
    root = _voc(tmp_path, {"a": ["crack", "smudge"], "b": ["smudge"]})
    with pytest.raises(DatasetError, match=r"'smudge': 2"):
        read_voc(root, LABELS)
    samples, report = read_voc(root, LABELS, ignore_unknown_labels=True)
    assert len(samples) == 2 and report.unknown_labels["smudge"] == 2


def test_elpv_defective_means_probability_at_least_half(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    lines = []
    for i, p in enumerate([0.0, 0.3333333333333333, 0.6666666666666666, 1.0]):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "images" / f"c{i}.png")
        lines.append(f"images/c{i}.png  {p}  mono")
    lines.append("images/missing.png 1.0 poly")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    samples, report = read_elpv(tmp_path, LabelSet("elpv", ("defective",)))
    assert [s.target.tolist() for s in samples] == [[0], [0], [1], [1]]
    confidences = [float(s.confidence[0]) for s in samples if s.confidence is not None]
    assert confidences == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert report.unreadable_images == ["images/missing.png"]


def test_readers_refuse_wrong_layouts(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="JPEGImages"):
        read_voc(tmp_path, LABELS)
    with pytest.raises(DatasetError, match=r"labels\.csv"):
        read_elpv(tmp_path, LabelSet("elpv", ("defective",)))


def test_voc_files_that_cannot_be_read_as_annotations_are_counted_not_raised(
    tmp_path: Path,
) -> None:
    root = _voc(tmp_path, {"gbk": [], "nameless": [], "infinite": [], "ok": ["crack"]})
    ann = root / "Annotations"
    # expat has no multi-byte codecs: a GBK file (Chinese labelling tools) is a ValueError
    (ann / "gbk.xml").write_bytes(
        '<?xml version="1.0" encoding="GBK"?><annotation><object><name>crack</name>'
        "</object></annotation>".encode("gbk")
    )
    # a labelled object without its name must not turn the image into a defect-free one
    (ann / "nameless.xml").write_text(
        "<annotation><object><name>crack</name></object><object><name> </name></object>"
        "</annotation>"
    )
    (ann / "infinite.xml").write_text(
        "<annotation><object><name>finger</name><bndbox><xmin>-inf</xmin><ymin>0</ymin>"
        "<xmax>4</xmax><ymax>4</ymax></bndbox></object></annotation>"
    )

    samples, report = read_voc(root, LABELS)

    by_stem = {s.path.stem: s for s in samples}
    assert sorted(by_stem) == ["infinite", "ok"]
    assert by_stem["infinite"].target.tolist() == [0, 1] and by_stem["infinite"].boxes == ()
    assert sorted(name.split()[0] for name in report.bad_annotation) == [
        "gbk.xml",
        "nameless.xml",
    ]
    assert "without a <name>" in " ".join(report.bad_annotation)


def _elpv(root: Path, text: str, encoding: str = "utf-8") -> Path:
    (root / "images").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "images" / f"c{i}.png")
    (root / "labels.csv").write_bytes(text.encode(encoding))
    return root


ELPV = LabelSet("elpv", ("defective",))


def test_elpv_reads_a_spreadsheets_byte_order_mark_and_cell_types_in_any_case(
    tmp_path: Path,
) -> None:
    root = _elpv(tmp_path, "images/c0.png 1.0 Mono\r\nimages/c1.png 0.0 poly\r\n", "utf-8-sig")
    samples, report = read_elpv(root, ELPV)
    assert [s.path.name for s in samples] == ["c0.png", "c1.png"] and not report.bad_annotation
    mono, _ = read_elpv(root, ELPV, cell_type="mono")
    assert [s.path.name for s in mono] == ["c0.png"]
    with pytest.raises(DatasetError, match=r"no 'poly' cell.*'mono': 2"):
        read_elpv(_elpv(tmp_path / "m", "images/c0.png 1.0 mono\nimages/c1.png 0 mono\n"),
                  ELPV, cell_type="poly")  # fmt: skip


def test_elpv_probabilities_outside_0_to_1_are_bad_rows_not_labels(tmp_path: Path) -> None:
    text = "images/c0.png 33 mono\nimages/c1.png nan mono\nimages/c2.png 0.5 mono\n"
    samples, report = read_elpv(_elpv(tmp_path, text), ELPV)
    assert [s.path.name for s in samples] == ["c2.png"]
    assert report.bad_annotation == ["images/c0.png 33 mono", "images/c1.png nan mono"]


@pytest.mark.parametrize(
    ("text", "encoding", "says"),
    [
        ("images/c0.png,1.0,mono\nimages/c1.png,0.0,mono\n", "utf-8", "separated by spaces"),
        ("images/c\xe9.png 1.0 mono\n", "latin-1", "not UTF-8"),
    ],
    ids=["commas", "latin-1"],
)
def test_an_elpv_file_that_cannot_be_read_says_why(
    tmp_path: Path, text: str, encoding: str, says: str
) -> None:
    with pytest.raises(DatasetError, match=says):
        read_elpv(_elpv(tmp_path, text, encoding), ELPV)


def test_voc_names_what_it_does_not_read(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _voc(tmp_path, {"a": ["crack"]})
    (root / "JPEGImages" / "b.webp").write_bytes(b"RIFF")
    (root / "JPEGImages" / "line2").mkdir()
    (root / "Annotations" / "z.xml").write_text("<annotation/>")

    with caplog.at_level("WARNING", logger="eldefect.data.readers"):
        samples, report = read_voc(root, LABELS)

    assert "z.xml" in caplog.text  # seen at --log-level WARNING too

    assert [s.path.name for s in samples] == ["a.png"]
    assert report.not_read == ["b.webp", "line2/"]
    assert report.annotation_without_image == ["z.xml"]
    assert "2 entries of the image folder not read" in report.summary()
    assert "1 annotations without an image: z.xml" in report.summary()
