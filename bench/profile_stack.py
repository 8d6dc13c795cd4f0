"""Where the end-to-end time goes: py-spy samples the gateway and the worker under load.

Starts the same stack `eldefect bench` measures (gateway + one worker on a fresh database),
runs the load generator at S stations, and records both processes with py-spy (sampling, no
code change) meanwhile. Prints each process's busiest functions (own time, as a share of
the samples) and writes the collapsed stacks (flamegraph input) beside them.

    python bench/profile_stack.py --stations 16 --seconds 20 \\
        --postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres \\
        --redis-url redis://127.0.0.1:6379/5

Needs py-spy (pip install py-spy) and the right to ptrace children (root or ptrace_scope 0).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from workers.benchmark.sections import Stack, standalone_context


def top_frames(collapsed: Path, n: int) -> list[tuple[str, float]]:
    """Functions by own samples (the leaf of each stack), as shares of all samples."""
    own: Counter[str] = Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        own[stack.split(";")[-1]] += int(count)
    total = sum(own.values()) or 1
    return [(frame, count / total) for frame, count in own.most_common(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stations", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--postgres-url", default=None)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--images", choices=["cell", "strip", "module"], default="strip")
    parser.add_argument("--out", type=Path, default=None, help="Default: a temporary folder.")
    opts = parser.parse_args()
    out = (opts.out or Path(tempfile.mkdtemp(prefix="eldefect-profile-"))).resolve()
    ctx, files = standalone_context(
        out,
        seconds=opts.seconds,
        postgres_url=opts.postgres_url,
        redis_url=opts.redis_url,
        kind=opts.images,
    )
    backend = "postgres+redis" if opts.postgres_url else "embedded"
    stack = Stack(ctx, backend=backend, root=out / backend, workers=1)
    with stack.running():
        spies = {
            who: subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("py-spy")),
                    "record",
                    "--pid",
                    str(proc.pid),
                    "--duration",
                    str(int(opts.seconds)),
                    "--rate",
                    "200",
                    "--format",
                    "raw",
                    "--output",
                    str(out / f"{who}.collapsed"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for who, proc in (("gateway", stack.gateway), ("worker", stack.workers[0]))
        }
        row = stack.load(files, opts.stations)
        for spy in spies.values():
            spy.wait(60)
    print(
        f"{backend}, {opts.stations} stations: {row['images_per_s']:.1f} images/s, "
        f"p50 {row['p50_ms']:.0f} ms"
    )
    for who in spies:
        print(f"\n{who}: busiest functions (own time share of samples)")
        for frame, share in top_frames(out / f"{who}.collapsed", 15):
            print(f"  {share:6.1%}  {frame}")
    print(f"\ncollapsed stacks under {out}")


if __name__ == "__main__":
    main()
