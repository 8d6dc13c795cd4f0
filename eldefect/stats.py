"""Input intensity statistics: one function for the training profile and for serving.

Pure numpy so that monitoring (drift) can import it without torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

FEATURES = ("mean", "std", "p10", "p50", "p90")
# Percentiles over at most this many pixels: a strided subsample is within ~1e-3 of the
# exact value on EL images and keeps a 24-megapixel module image cheap.
_MAX_SAMPLE = 1_000_000


def input_statistics(gray: np.ndarray) -> dict[str, float]:
    """Intensity statistics of an (H, W) image on a 0..1 scale."""
    assert gray.ndim == 2, f"expected a 2-D grayscale image, got shape {gray.shape}"
    flat = gray.reshape(-1)
    if flat.size > _MAX_SAMPLE:
        flat = flat[:: int(np.ceil(flat.size / _MAX_SAMPLE))]
    p10, p50, p90 = np.percentile(flat, [10, 50, 90])
    return {
        "mean": float(flat.mean()),
        "std": float(flat.std()),
        "p10": float(p10),
        "p50": float(p50),
        "p90": float(p90),
    }


def feature_profile(rows: Iterable[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation of each statistic over a set of images."""
    matrix = np.array([[row[f] for f in FEATURES] for row in rows], dtype=np.float64)
    if matrix.size == 0:
        raise ValueError("cannot build a profile from zero images")
    return {
        f: {"mean": float(matrix[:, i].mean()), "std": float(matrix[:, i].std())}
        for i, f in enumerate(FEATURES)
    }
