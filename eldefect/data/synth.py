"""Synthetic EL cell images with drawn defects, written as a Pascal VOC dataset.

An EL image of a cell: a dark background, a bright cell with uneven brightness, thin dark
fingers (horizontal) and busbars (vertical), camera noise. Defects darken the cell in the
shapes they take on real EL images. Deterministic per seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from eldefect.data.voc_xml import VocObject, write_voc_xml
from eldefect.labels import LabelSetError, load_label_set

Rng = np.random.Generator
# Each drawer returns a mask (uint8 0..255) of where the defect darkens the cell, and how much.
Drawer = Callable[[Rng, int, tuple[int, int, int, int]], tuple[Image.Image, float]]


def _canvas(size: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    mask = Image.new("L", (size, size), 0)
    return mask, ImageDraw.Draw(mask)


def _point(rng: Rng, cell: tuple[int, int, int, int], pad: float = 0.15) -> tuple[float, float]:
    x0, y0, x1, y1 = cell
    w, h = x1 - x0, y1 - y0
    return (x0 + w * rng.uniform(pad, 1 - pad), y0 + h * rng.uniform(pad, 1 - pad))


def _crack(rng: Rng, size: int, cell: tuple[int, int, int, int]) -> tuple[Image.Image, float]:
    mask, draw = _canvas(size)
    x, y = _point(rng, cell)
    heading = rng.uniform(0, 2 * np.pi)
    points = [(x, y)]
    for _ in range(rng.integers(5, 9)):  # a jagged random walk
        heading += rng.normal(0, 0.6)
        step = size * rng.uniform(0.04, 0.08)
        x, y = x + step * np.cos(heading), y + step * np.sin(heading)
        points.append((x, y))
    draw.line(points, fill=255, width=max(2, size // 100))
    return mask, 0.75


def _star_crack(rng: Rng, size: int, cell: tuple[int, int, int, int]) -> tuple[Image.Image, float]:
    mask, draw = _canvas(size)
    cx, cy = _point(rng, cell, pad=0.3)
    for angle in rng.uniform(0, 2 * np.pi) + np.linspace(0, 2 * np.pi, rng.integers(5, 8), False):
        length = size * rng.uniform(0.08, 0.16)
        draw.line(
            [(cx, cy), (cx + length * np.cos(angle), cy + length * np.sin(angle))],
            fill=255,
            width=max(2, size // 100),
        )
    return mask, 0.75


def _scratch(rng: Rng, size: int, cell: tuple[int, int, int, int]) -> tuple[Image.Image, float]:
    mask, draw = _canvas(size)
    x0, _y0, x1, _y1 = cell
    angle = rng.uniform(0.3, 1.2) * rng.choice([-1, 1])
    cx, cy = _point(rng, cell, pad=0.35)
    half = (x1 - x0) * 0.45
    dx, dy = half * np.cos(angle), half * np.sin(angle)
    draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=255, width=max(2, size // 120))
    return mask, 0.45


def _finger(rng: Rng, size: int, cell: tuple[int, int, int, int]) -> tuple[Image.Image, float]:
    mask, draw = _canvas(size)
    x, y = _point(rng, cell, pad=0.2)
    pitch = size / 40
    for i in range(rng.integers(3, 6)):  # interrupted fingers: dark dashes stacked in a column
        yy = y + i * pitch * 1.5
        xx = x + rng.normal(0, pitch)
        draw.rectangle([xx, yy, xx + size * rng.uniform(0.06, 0.1), yy + pitch * 0.7], fill=255)
    return mask, 0.5


def _black_core(rng: Rng, size: int, cell: tuple[int, int, int, int]) -> tuple[Image.Image, float]:
    mask, draw = _canvas(size)
    cx, cy = _point(rng, cell, pad=0.4)
    rx, ry = size * rng.uniform(0.15, 0.25), size * rng.uniform(0.15, 0.25)
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    return mask.filter(ImageFilter.GaussianBlur(size / 30)), 0.6


def _thick_line(rng: Rng, size: int, cell: tuple[int, int, int, int]) -> tuple[Image.Image, float]:
    mask, draw = _canvas(size)
    x0, y0, x1, y1 = cell
    width = size * rng.uniform(0.025, 0.04)
    if rng.random() < 0.5:
        x = _point(rng, cell)[0]
        draw.rectangle([x, y0, x + width, y1], fill=255)
    else:
        y = _point(rng, cell)[1]
        draw.rectangle([x0, y, x1, y + width], fill=255)
    return mask, 0.65


def _band(vertical: bool) -> Drawer:
    def draw_band(
        rng: Rng, size: int, cell: tuple[int, int, int, int]
    ) -> tuple[Image.Image, float]:
        mask, draw = _canvas(size)
        x0, y0, x1, y1 = cell
        width = size * rng.uniform(0.08, 0.14)
        px, py = _point(rng, cell, pad=0.2)
        if vertical:
            draw.rectangle([px, y0, px + width, y1], fill=255)
        else:
            draw.rectangle([x0, py, x1, py + width], fill=255)
        return mask.filter(ImageFilter.GaussianBlur(size / 90)), 0.35

    return draw_band


def _short_circuit(
    rng: Rng, size: int, cell: tuple[int, int, int, int]
) -> tuple[Image.Image, float]:
    mask, draw = _canvas(size)
    draw.rectangle(cell, fill=255)  # the whole cell goes dark
    return mask, rng.uniform(0.6, 0.7)


def _printing_error(
    rng: Rng, size: int, cell: tuple[int, int, int, int]
) -> tuple[Image.Image, float]:
    mask, draw = _canvas(size)
    x, y = _point(rng, cell, pad=0.25)
    dot, pitch = max(2, size // 64), size / 20
    for i in range(3):  # a small regular grid of dark dots: a misprinted paste pattern
        for j in range(3):
            cx, cy = x + i * pitch, y + j * pitch
            draw.rectangle([cx, cy, cx + dot, cy + dot], fill=255)
    return mask, 0.8


def _corner(rng: Rng, size: int, cell: tuple[int, int, int, int]) -> tuple[Image.Image, float]:
    mask, draw = _canvas(size)
    x0, y0, x1, y1 = cell
    leg = (x1 - x0) * rng.uniform(0.2, 0.3)
    corner = rng.integers(4)
    cx, cy = (x0, x1, x1, x0)[corner], (y0, y0, y1, y1)[corner]
    sx, sy = (1, -1, -1, 1)[corner], (1, 1, -1, -1)[corner]
    draw.polygon([(cx, cy), (cx + sx * leg, cy), (cx, cy + sy * leg)], fill=255)
    return mask, 0.85


def _fragment(rng: Rng, size: int, cell: tuple[int, int, int, int]) -> tuple[Image.Image, float]:
    mask, draw = _canvas(size)
    x0, y0, x1, y1 = cell
    w = x1 - x0
    top = rng.random() < 0.5  # a chunk broken off along one edge: fully dark, straight cuts
    a, b = x0 + w * rng.uniform(0.1, 0.4), x0 + w * rng.uniform(0.6, 0.9)
    depth = w * rng.uniform(0.2, 0.35)
    edge = y0 if top else y1
    inner = edge + depth if top else edge - depth
    draw.polygon([(a, edge), (b, edge), (b - w * 0.05, inner), (a + w * 0.1, inner)], fill=255)
    return mask, 0.95


DRAWERS: dict[str, Drawer] = {
    "finger": _finger,
    "crack": _crack,
    "black_core": _black_core,
    "thick_line": _thick_line,
    "horizontal_dislocation": _band(vertical=False),
    "short_circuit": _short_circuit,
    "vertical_dislocation": _band(vertical=True),
    "star_crack": _star_crack,
    "printing_error": _printing_error,
    "corner": _corner,
    "fragment": _fragment,
    "scratch": _scratch,
}


def render_cell(rng: Rng, size: int, defects: Sequence[str]) -> tuple[np.ndarray, list[VocObject]]:
    """One synthetic EL cell image (uint8, (size, size)) and its defect boxes."""
    margin = int(size * rng.uniform(0.04, 0.08))
    cell = (margin, margin, size - margin - 1, size - margin - 1)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    # Uneven brightness: a tilted plane plus a broad bump, as contact resistance leaves it.
    gx, gy = rng.normal(0, 0.15, 2)
    bx, by = rng.uniform(0.2, 0.8, 2)
    shade = 1 + gx * (xx - 0.5) + gy * (yy - 0.5)
    shade += 0.1 * np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / 0.1)
    img = np.full((size, size), rng.uniform(0.55, 0.8), np.float32) * shade
    pitch = size / 40
    fingers = (np.mod(yy * size, pitch) < 1.0).astype(np.float32)
    img *= 1 - 0.15 * fingers
    for bus_x in np.linspace(0.25, 0.75, rng.integers(2, 4)):
        img[:, int(bus_x * size) : int(bus_x * size) + max(2, size // 80)] *= 0.65

    boxes: list[VocObject] = []
    for name in defects:
        mask_img, strength = DRAWERS[name](rng, size, cell)
        mask = np.asarray(mask_img, dtype=np.float32) / 255.0
        img *= 1 - strength * mask
        ys, xs = np.nonzero(mask > 0.1)
        if xs.size:
            boxes.append(
                VocObject(name, (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())))
            )

    outside = np.ones((size, size), bool)
    outside[cell[1] : cell[3] + 1, cell[0] : cell[2] + 1] = False
    img[outside] = 0.04
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)  # sensor noise
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8), boxes


def write_synthetic_dataset(
    out: Path,
    *,
    n: int,
    seed: int = 0,
    size: int = 256,
    classes: Sequence[str] | None = None,
    healthy_fraction: float = 0.2,
    max_defects: int = 2,
    progress: bool = True,
) -> Path:
    """Write `n` synthetic cells to `out` in Pascal VOC layout; returns `out`."""
    names = list(classes) if classes else list(load_label_set().labels)
    unknown = sorted(set(names) - set(DRAWERS))
    if unknown:
        raise LabelSetError(f"no synthetic drawer for {unknown}; drawable: {sorted(DRAWERS)}")
    (out / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (out / "Annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in tqdm(range(n), desc="synth", unit="img", disable=not progress):
        count = 0 if rng.random() < healthy_fraction else int(rng.integers(1, max_defects + 1))
        picked = list(rng.choice(names, size=min(count, len(names)), replace=False))
        # A dark short-circuited cell hides anything drawn before it: draw it first.
        picked.sort(key=lambda name: name != "short_circuit")
        pixels, boxes = render_cell(rng, size, picked)
        stem = f"synth_{seed}_{i:05d}"
        Image.fromarray(pixels).save(out / "JPEGImages" / f"{stem}.png")
        write_voc_xml(
            out / "Annotations" / f"{stem}.xml",
            filename=f"{stem}.png",
            width=size,
            height=size,
            objects=boxes,
        )
    return out
