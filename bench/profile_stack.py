"""Where the end-to-end time goes: py-spy samples the gateway and the worker under load.

Starts the same stack `eldefect bench` measures (gateway + one worker on a fresh database),
runs the load generator at S stations, and records both processes with py-spy (sampling, no
code change) meanwhile. Prints each process's busiest functions (own time, as a share of
the samples) and writes the collapsed stacks (flamegraph input) beside them.

It also prints the CPU time each part of the stack spent per finished job, read from /proc,
so it holds on a busy machine where samples of waiting threads say little: the gateway and
the worker (with their child processes), every PostgreSQL process, Redis, and the load
generator. `--no-spy` skips py-spy, whose sampling costs CPU of its own.

    python bench/profile_stack.py --stations 16 --seconds 20 \\
        --postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres \\
        --redis-url redis://127.0.0.1:6379/5

Needs py-spy (pip install py-spy) and the right to ptrace children (root or ptrace_scope 0).
"""

from __future__ import annotations

import argparse
import os
import resource
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


_TICK = os.sysconf("SC_CLK_TCK")


def _processes() -> dict[int, tuple[str, int, float]]:
    """pid -> (command name, parent pid, CPU seconds so far) for every process."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(entry.name)] = (name, int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK)
    return out


def cpu_by_part(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each root process with its descendants, of every postgres
    process and of redis-server."""
    procs = _processes()
    totals = dict.fromkeys([*roots, "postgres", "redis"], 0.0)
    owner = {pid: part for part, pid in roots.items()}
    for pid in sorted(procs):  # parents start before their children, so have lower pids
        name, parent, cpu = procs[pid]
        part = owner.get(pid) or owner.get(parent)
        if part is not None:
            owner[pid] = part
        elif name.startswith("postgres"):
            part = "postgres"
        elif name.startswith("redis-server"):
            part = "redis"
        if part is not None:
            totals[part] += cpu
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stations", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--postgres-url", default=None)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--images", choices=["cell", "strip", "module"], default="strip")
    parser.add_argument("--out", type=Path, default=None, help="Default: a temporary folder.")
    parser.add_argument("--no-spy", action="store_true", help="CPU per job only, no py-spy.")
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
        roots = {"gateway": stack.gateway.pid, "worker": stack.workers[0].pid}
        cpu_before = cpu_by_part(roots)
        loadgen_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        spies = (
            {}
            if opts.no_spy
            else {
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
        )
        row = stack.load(files, opts.stations)
        loadgen_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_after = cpu_by_part(roots)
        for spy in spies.values():
            spy.wait(60)
    print(
        f"{backend}, {opts.stations} stations: {row['images_per_s']:.1f} images/s, "
        f"p50 {row['p50_ms']:.0f} ms"
    )
    jobs = max(1, int(row["succeeded"]))
    spent = {part: cpu_after[part] - cpu_before[part] for part in cpu_after}
    spent["load generator"] = (loadgen_after.ru_utime + loadgen_after.ru_stime) - (
        loadgen_before.ru_utime + loadgen_before.ru_stime
    )
    print(f"\nCPU per finished job ({jobs} jobs), ms:")
    for part, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {1000 * seconds / jobs:7.1f}  {part}")
    print(f"  {1000 * sum(spent.values()) / jobs:7.1f}  all of it")
    for who in spies:
        print(f"\n{who}: busiest functions (own time share of samples)")
        for frame, share in top_frames(out / f"{who}.collapsed", 15):
            print(f"  {share:6.1%}  {frame}")
    print(f"\ncollapsed stacks under {out}")


if __name__ == "__main__":
    main()
