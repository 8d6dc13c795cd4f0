"""p50 at one station, ours against the synchronous peer, alternating within one run.

Starts our stack (gateway + one worker on a fresh database, as `eldefect bench` does) and
the synchronous peer (bench/peers/sync_predict.py) side by side, then alternates bounded
one-station loads on each, so that both see the same machine load; prints every round and
the median of the per-round differences (ours - peer), the figure issue 9 targets.

    python bench/one_station.py --rounds 5 --seconds 10 \\
        --postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres \\
        --redis-url redis://127.0.0.1:6379/11
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from workers.benchmark.sections import Stack, peer, run_load, standalone_context


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0, help="Per load, each side.")
    parser.add_argument("--postgres-url", default=None)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--out", type=Path, default=None, help="Default: a temporary folder.")
    opts = parser.parse_args()
    out = (opts.out or Path(tempfile.mkdtemp(prefix="eldefect-one-station-"))).resolve()
    ctx, files = standalone_context(
        out, seconds=opts.seconds, postgres_url=opts.postgres_url, redis_url=opts.redis_url
    )
    backend = "postgres+redis" if opts.postgres_url else "embedded"
    rounds = []
    load_before = os.getloadavg()
    stack = Stack(ctx, backend=backend, root=out / backend, workers=1)
    with stack.running(), peer(ctx, "sync_predict") as (peer_url, _pid):
        for i in range(opts.rounds):
            ours = stack.load(files, 1)
            theirs = run_load(ctx, url=peer_url, mode="predict", files=files, stations=1)
            rounds.append({"ours": ours, "peer": theirs, "load": os.getloadavg()[0]})
            print(
                f"round {i + 1}: ours p50 {ours['p50_ms']:.1f} ms ({ours['succeeded']} jobs), "
                f"peer p50 {theirs['p50_ms']:.1f} ms, difference "
                f"{ours['p50_ms'] - theirs['p50_ms']:+.1f} ms, load {rounds[-1]['load']:.2f}",
                flush=True,
            )
        memory = stack.peak_rss()
    summary = {
        "backend": backend,
        "ours_p50_ms": statistics.median(r["ours"]["p50_ms"] for r in rounds),
        "peer_p50_ms": statistics.median(r["peer"]["p50_ms"] for r in rounds),
        "difference_ms": statistics.median(
            r["ours"]["p50_ms"] - r["peer"]["p50_ms"] for r in rounds
        ),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "gateway_peak_rss_mib": memory["gateway_mib"],
    }
    (out / "one_station.json").write_text(json.dumps({"summary": summary, "rounds": rounds}))
    print(json.dumps(summary))
    print(f"figures and logs under {out}")


if __name__ == "__main__":
    main()
