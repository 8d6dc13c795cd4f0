"""The training augmentation: quarter turns keep the pixels, only their orientation changes;
defect copy-paste moves a box of one image into another, unframed, with its class."""

from __future__ import annotations

import pytest
import torch

from eldefect.augment import DefectPaste, RandomQuarterTurn, blend_patch, build_augmentation
from eldefect.config import AugmentConfig
from eldefect.data.cache import scale_boxes


def test_a_quarter_turn_is_one_of_the_two_turns_and_never_a_crop() -> None:
    x = torch.arange(16, dtype=torch.float32).reshape(1, 4, 4)
    turns = {1: torch.rot90(x, 1, (-2, -1)), 3: torch.rot90(x, 3, (-2, -1))}
    torch.manual_seed(0)
    seen = set()
    for _ in range(40):
        y = RandomQuarterTurn(1.0)(x)
        matches = [k for k, turned in turns.items() if torch.equal(y, turned)]
        assert len(matches) == 1, y
        seen.add(matches[0])
    assert seen == {1, 3}
    assert torch.equal(RandomQuarterTurn(0.0)(x), x)


def test_quarter_turns_are_only_in_the_pipeline_when_asked_for() -> None:
    plain = AugmentConfig(rotate_degrees=0, brightness=0, contrast=0, gamma=0)
    turning = plain.model_copy(update={"quarter_turn": 0.5})
    kinds = [type(step) for step in build_augmentation(plain).transforms]  # type: ignore[union-attr]
    assert RandomQuarterTurn not in kinds
    turned = build_augmentation(turning)
    assert turned is not None
    assert RandomQuarterTurn in [type(step) for step in turned.transforms]


def test_boxes_scale_to_whole_pixels_of_the_resized_image() -> None:
    boxes = [(1, 0.1, 0.0, 0.52, 1.0), (0, 0.5, 0.5, 0.501, 0.5), (2, 0.9, 0.9, 1.2, 1.0)]
    # Widened outward to whole pixels; the empty box dropped; the overhang clipped.
    assert scale_boxes(boxes, 10) == ((1, 0, 10, 1, 6), (2, 9, 10, 9, 10))


def test_a_blended_patch_takes_the_regions_brightness_and_fades_in_at_its_edges() -> None:
    region = torch.full((1, 12, 12), 0.6)
    patch = torch.full((1, 12, 12), 0.4)
    patch[:, 5:7, :] = 0.1  # a dark crack across a dimmer cell
    blend_patch(region, patch, ramp=3)

    gain = 0.6 / 0.4  # the lit part of the patch is raised to the region's level
    assert torch.allclose(region[:, 4, 4], torch.tensor(0.6))
    assert torch.allclose(region[:, 5, 5], torch.tensor(0.1 * gain))
    # The edge keeps most of what was there: no sharp frame around the paste.
    corner = region[0, 0, 0].item()
    assert corner == pytest.approx(0.6)
    edge = region[0, 5, 0].item()
    assert 0.1 * gain < edge < 0.6 and edge == pytest.approx(0.6 * 0.75 + 0.15 * 0.25)


def test_defect_paste_copies_a_donors_boxes_and_the_class_only() -> None:
    images = torch.zeros(3, 1, 8, 8)
    images[0] = 0.5
    images[1, :, 2:4, 2:6] = 0.9  # the donor's defect; the donor is otherwise dark
    regions = [(), ((1, 2, 4, 2, 6), (0, 6, 8, 6, 8)), ()]
    target = torch.tensor([0.0, 0.0])

    never = DefectPaste(images, regions, donors=[1, 2], probabilities={1: 0.0})
    x, same = never(images[0].clone(), target)
    assert torch.equal(x, images[0]) and same is target

    always = DefectPaste(images, regions, donors=[1, 2], probabilities={1: 1.0})
    assert [j for j, _ in always.sources[1]] == [1], "only images with a box of the class"
    x, pasted = always(images[0].clone(), target)
    assert pasted.tolist() == [0.0, 1.0] and target.tolist() == [0.0, 0.0]
    changed = (x != images[0]).nonzero()[:, 1:].unique(dim=0)
    assert {tuple(rc) for rc in changed.tolist()} <= {(r, c) for r in (2, 3) for c in range(2, 6)}
    assert x[0, 6:, 6:].eq(0.5).all(), "boxes of other classes stay where they are"


def test_defect_paste_without_donors_changes_nothing() -> None:
    images = torch.rand(2, 1, 8, 8)
    paste = DefectPaste(images, [(), ()], donors=[0, 1], probabilities={0: 1.0})
    target = torch.tensor([0.0])
    x, same = paste(images[0].clone(), target)
    assert torch.equal(x, images[0]) and same is target


def test_a_box_over_half_the_image_is_no_donor() -> None:
    """Reviewed jobs, exported as training data, mark the whole image: pasting that would
    move a whole image with its other defects unlabelled."""
    images = torch.rand(3, 1, 8, 8)
    regions = [(), ((0, 0, 8, 0, 8),), ((0, 0, 4, 0, 8),)]  # the whole image; exactly half
    paste = DefectPaste(images, regions, donors=[1, 2], probabilities={0: 1.0})
    assert [j for j, _ in paste.sources[0]] == [2]
