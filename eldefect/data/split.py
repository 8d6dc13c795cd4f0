"""Seeded splits stratified for multi-label targets: train/validation, and k folds.

Iterative stratification (Sechidis, Tsoumakas and Vlahavas, 2011): take the label with the
fewest unassigned positives, give each of its samples to the part that still wants that label
most (ties: the part with the most room), repeat; defect-free samples fill the remaining room.
So every class, the rare ones too, gets its share of each part.
"""

from __future__ import annotations

import numpy as np

from eldefect.data.readers import DatasetError


def assign_parts(targets: np.ndarray, fractions: np.ndarray, seed: int) -> np.ndarray:
    """The part (0..len(fractions)-1) of each row of an (N, C) 0/1 target matrix."""
    assert np.isclose(fractions.sum(), 1.0), f"fractions must sum to 1, got {fractions}"
    rng = np.random.default_rng(seed)
    n, parts = len(targets), len(fractions)
    positive = targets > 0
    wants = fractions[:, None] * positive.sum(0)[None, :]  # (P, C) positives each part wants
    room = fractions * n  # (P,) samples each part still takes
    part = np.full(n, -1)

    while True:
        open_pos = positive & (part < 0)[:, None]
        counts = open_pos.sum(0)
        if not counts.any():
            break
        label = int(np.argmin(np.where(counts > 0, counts, np.iinfo(np.int64).max)))
        for i in rng.permutation(np.flatnonzero(open_pos[:, label])):
            key = np.lexsort((rng.random(parts), room, wants[:, label]))  # last key sorts first
            p = int(key[-1])
            part[i] = p
            wants[p] -= positive[i]
            room[p] -= 1
    for i in rng.permutation(np.flatnonzero(part < 0)):
        p = int(np.argmax(room))
        part[i] = p
        room[p] -= 1
    return part


def stratified_split(
    targets: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) for an (N, C) 0/1 target matrix."""
    part = assign_parts(targets, np.array([1 - val_fraction, val_fraction]), seed)
    return np.flatnonzero(part == 0), np.flatnonzero(part == 1)


def stratified_folds(targets: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The fold (0..k-1) of each row: k parts of equal size, each class spread evenly."""
    assert k >= 2, f"cross-validation needs at least 2 folds, got {k}"
    return assign_parts(targets, np.full(k, 1.0 / k), seed)


def validation_split(
    targets: np.ndarray, *, val_fraction: float, seed: int, folds: int | None, fold: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): fold `fold` of `folds` when folds are set, else a fraction.

    Raises DatasetError when a split would be empty (too few images to train and validate).
    """
    n = len(targets)
    if folds is None:
        train, val = stratified_split(targets, val_fraction, seed)
        if len(train) == 0 or len(val) == 0:
            raise DatasetError(
                f"{n} images cannot make both a training and a validation split "
                f"(data.val_fraction {val_fraction}): add images"
            )
        return train, val
    part = stratified_folds(targets, folds, seed)
    if np.bincount(part, minlength=folds).min() == 0:
        raise DatasetError(f"{n} images cannot fill {folds} folds: use fewer folds or more images")
    return np.flatnonzero(part != fold), np.flatnonzero(part == fold)
