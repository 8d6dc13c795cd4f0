"""The gate's comparison, the hashed hold-out, and the review export's layout."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from eldefect.data.readers import read_voc
from eldefect.data.reviews import is_holdout, write_review_folders
from eldefect.gate import compare, decide, score
from eldefect.labels import LabelSet

LABELS = ["crack", "finger"]


def scores(probs: list[list[float]], targets: list[list[int]]):
    return score(np.array(probs), np.array(targets, float), LABELS, dict.fromkeys(LABELS, 0.5))


TARGETS = [[1, 0], [0, 1], [1, 1], [0, 0]]
GOOD = scores([[0.9, 0.1], [0.2, 0.8], [0.7, 0.9], [0.1, 0.2]], TARGETS)
WORSE = scores([[0.2, 0.1], [0.6, 0.8], [0.4, 0.9], [0.7, 0.2]], TARGETS)


def test_scores_are_macro_ap_accuracy_and_recall_at_the_models_thresholds() -> None:
    assert GOOD.macro_ap == 1.0 and GOOD.accuracy == 1.0
    assert GOOD.recall == {"crack": 1.0, "finger": 1.0}
    assert WORSE.recall["crack"] == 0.0 and WORSE.accuracy == 0.0


def test_a_challenger_as_good_passes_and_a_worse_one_is_stopped_with_the_numbers() -> None:
    same = compare("holdout", GOOD, GOOD, ap_margin=0.02, recall_margin=0.05)
    assert same.passed and same.reasons == []
    worse = compare("holdout", GOOD, WORSE, ap_margin=0.02, recall_margin=0.05)
    assert not worse.passed
    assert any("macro AP" in r for r in worse.reasons)
    assert any("recall of crack 0.0000 < champion 1.0000" in r for r in worse.reasons)
    result = decide([same, worse], ap_margin=0.02, recall_margin=0.05)
    assert not result.passed and result.reasons == worse.reasons
    record = result.to_dict()
    assert record["sets"]["holdout"]["challenger"]["recall"]["crack"] == 0.0
    assert result.tags()["gate.passed"] == "false"


def test_margins_allow_small_losses_and_no_champion_or_no_set_decide_plainly() -> None:
    lenient = compare("eval", GOOD, WORSE, ap_margin=1.0, recall_margin=1.0)
    assert lenient.passed
    assert compare("eval", None, WORSE, ap_margin=0, recall_margin=0).passed
    assert not decide([], ap_margin=0.02, recall_margin=0.05).passed


def test_a_recall_bought_by_flagging_every_image_is_not_protected() -> None:
    # Ten images, four cracked. The champion calls every image cracked: recall 1.0, precision
    # 0.4, exactly what "all positive" scores. The challenger finds three of the four cracks
    # and nothing else: recall 0.75, but it is the one an operator can use.
    targets = [[1, 0]] * 4 + [[0, 0]] * 6
    flags_all = scores([[0.9, 0.1]] * 10, targets)
    finds_most = scores([[0.9, 0.1]] * 3 + [[0.2, 0.1]] + [[0.1, 0.1]] * 6, targets)
    assert flags_all.flags_everything("crack") and not finds_most.flags_everything("crack")
    verdict = compare("holdout", flags_all, finds_most, ap_margin=0.02, recall_margin=0.05)
    assert verdict.passed, verdict.reasons
    assert any("recall of crack not compared" in note for note in verdict.notes)
    # A champion with a real recall of its own is still protected.
    sharp = scores([[0.9, 0.1]] * 4 + [[0.1, 0.1]] * 6, targets)
    assert not compare("holdout", sharp, finds_most, ap_margin=0.5, recall_margin=0.05).passed


def test_the_holdout_is_a_stable_share_by_job_id() -> None:
    ids = [f"{i:032x}" for i in range(4000)]
    held = [i for i in ids if is_holdout(i, 0.2)]
    assert 0.17 < len(held) / len(ids) < 0.23
    assert held == [i for i in ids if is_holdout(i, 0.2)]  # same answer every time
    assert not any(is_holdout(i, 0.0) for i in ids)


@dataclass(frozen=True)
class Item:
    job_id: str
    image: bytes
    format: str
    width: int
    height: int
    defects: list[str]
    labels: list[str]


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 30), 128, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_exported_reviews_read_back_with_the_voc_reader(tmp_path: Path) -> None:
    items = [
        Item(f"{i:032x}", _png(), "PNG", 30, 20, ["crack"] if i % 2 else [], LABELS)
        for i in range(40)
    ] + [Item("f" * 32, _png(), "PNG", 30, 20, [], ["defective"])]
    report = write_review_folders(
        items,
        train_dir=tmp_path / "train",
        holdout_dir=tmp_path / "holdout",
        holdout_fraction=0.25,
        labels=LABELS,
    )
    assert report.train + report.holdout == 40 and report.skipped_label_set == ["f" * 32]
    samples, _ = read_voc(tmp_path / "train", LabelSet("t", tuple(LABELS)))
    held, _ = read_voc(tmp_path / "holdout", LabelSet("t", tuple(LABELS)))
    assert len(samples) == report.train and len(held) == report.holdout
    by_id = {s.path.stem: s.target.tolist() for s in samples + held}
    assert by_id[f"{1:032x}"] == [1.0, 0.0] and by_id[f"{2:032x}"] == [0.0, 0.0]
    assert not {s.path.stem for s in samples} & {s.path.stem for s in held}
