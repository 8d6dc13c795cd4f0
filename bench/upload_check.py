"""Milliseconds per upload of the gateway's image check (`verify_image`) on PNG files.

    python bench/upload_check.py --data ../shared/data

PNGs are what the check costs most on: it decodes them whole (a JPEG at 1/8 scale). Reads
the first `--cells` ELPV cells (300 px PNG) and re-encodes the first `--strips`
PV-Multi-Defect JPEG strips as 8-bit PNG, then prints the median over `--rounds` rounds.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

from PIL import Image

from eldefect.image_check import verify_image

MAX_PIXELS = 50_000_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the shared data folder")
    parser.add_argument("--cells", type=int, default=200)
    parser.add_argument("--strips", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    opts = parser.parse_args()
    cells = sorted((opts.data / "elpv" / "images").glob("*.png"))[: opts.cells]
    uploads = [path.read_bytes() for path in cells]
    strips = sorted((opts.data / "pv-multi-defect" / "JPEGImages").glob("*.jpg"))
    for path in strips[: opts.strips]:
        buffer = io.BytesIO()
        Image.open(path).convert("L").save(buffer, format="PNG")
        uploads.append(buffer.getvalue())
    per_round = []
    for _ in range(opts.rounds):
        started = time.perf_counter()
        for data in uploads:
            verify_image(data, max_pixels=MAX_PIXELS)
        per_round.append((time.perf_counter() - started) / len(uploads) * 1000)
    shown = ", ".join(f"{ms:.2f}" for ms in per_round)
    print(
        f"{len(uploads)} PNG uploads: {statistics.median(per_round):.2f} ms each (rounds: {shown})"
    )


if __name__ == "__main__":
    main()
