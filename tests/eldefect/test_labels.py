from __future__ import annotations

import re
from pathlib import Path

import pytest

from eldefect.labels import LabelSetError, available_label_sets, load_label_set

PVEL_AD = (
    "finger",
    "crack",
    "black_core",
    "thick_line",
    "horizontal_dislocation",
    "short_circuit",
    "vertical_dislocation",
    "star_crack",
    "printing_error",
    "corner",
    "fragment",
    "scratch",
)


def test_default_is_pvel_ad_in_seed_order() -> None:
    assert load_label_set().labels == PVEL_AD


def test_shipped_sets() -> None:
    assert {"pvel_ad", "pv_multi_defect", "elpv"} <= set(available_label_sets())
    assert load_label_set("pv_multi_defect").labels == (
        "hot_spot",
        "scratch",
        "black_border",
        "no_electricity",
        "broken",
    )


def test_any_label_set_from_a_yaml_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nlabels: [a, b]\n")
    assert load_label_set(path).labels == ("a", "b")


def test_bad_label_sets_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "dupes.yaml"
    path.write_text("labels: [a, a]\n")
    with pytest.raises(LabelSetError, match="repeats"):
        load_label_set(path)
    with pytest.raises(LabelSetError, match="no label set"):
        load_label_set("nope")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("labels: [crack, finger", "not a readable YAML file"),
        ("labels: [crack, 12]", "without surrounding spaces; got [12]"),
        ("labels: ['crack ', finger]", "got ['crack ']"),
        ("labels:\n  - crack\n  -\n", "got [None]"),
    ],
    ids=["unclosed", "number", "spaces", "empty_item"],
)
def test_a_label_set_file_with_a_slip_is_a_label_set_error(
    tmp_path: Path, text: str, says: str
) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(LabelSetError, match=re.escape(says)):
        load_label_set(path)
