"""The training augmentation: quarter turns keep the pixels, only their orientation changes."""

from __future__ import annotations

import torch

from eldefect.augment import RandomQuarterTurn, build_augmentation
from eldefect.config import AugmentConfig


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
