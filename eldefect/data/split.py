"""A seeded train/validation split, stratified for multi-label targets.

Iterative stratification (Sechidis, Tsoumakas and Vlahavas, 2011): take the label with the
fewest unassigned positives, give each of its samples to the split that still wants that label
most (ties: the split with the most room), repeat; defect-free samples fill the remaining room.
"""

from __future__ import annotations

import numpy as np


def stratified_split(
    targets: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) for an (N, C) 0/1 target matrix."""
    rng = np.random.default_rng(seed)
    n = len(targets)
    positive = targets > 0
    fractions = np.array([1 - val_fraction, val_fraction])
    wants = fractions[:, None] * positive.sum(0)[None, :]  # (2, C) positives each split wants
    room = fractions * n  # (2,) samples each split still takes
    split = np.full(n, -1)

    while True:
        open_pos = positive & (split < 0)[:, None]
        counts = open_pos.sum(0)
        if not counts.any():
            break
        label = int(np.argmin(np.where(counts > 0, counts, np.iinfo(np.int64).max)))
        for i in rng.permutation(np.flatnonzero(open_pos[:, label])):
            key = np.lexsort((rng.random(2), room, wants[:, label]))  # last key sorts first
            s = int(key[-1])
            split[i] = s
            wants[s] -= positive[i]
            room[s] -= 1
    for i in rng.permutation(np.flatnonzero(split < 0)):
        s = int(np.argmax(room))
        split[i] = s
        room[s] -= 1
    return np.flatnonzero(split == 0), np.flatnonzero(split == 1)
