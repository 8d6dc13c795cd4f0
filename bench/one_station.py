"""p50 at one station, ours against the synchronous peer, alternating within one run.

Starts our stack (gateway + one worker on a fresh database, as `eldefect bench` does) and
the synchronous peer (bench/peers/sync_predict.py) side by side, then alternates bounded
one-station loads on each, so that both see the same machine load; prints every round and
the median of the per-round differences (ours - peer), the figure issue 9 targets.

`--arch cnn` serves a tiny CNN instead of ResNet-18: the forward pass then costs a few ms on
both sides, and the difference is the serving overhead alone (HTTP, database, broker), which
the machine's other work moves much less than it moves a ResNet-18 forward pass.
`--memory-stations N` ends with one load at N stations and reports the gateway's peak RSS.

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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from db.models import Job, Result
from db.session import session_scope
from workers.benchmark.sections import Stack, peer, run_load, standalone_context


def server_phases(database_url: str, since: datetime) -> dict[str, float]:
    """Medians, in ms, over the jobs created since `since`, as the database saw them: waiting
    to be claimed (commit to claim: enqueue, broker, Celery, claim), the worker's whole run
    (claim to the commit of the result) and its forward pass."""
    with session_scope(database_url) as session:
        rows = session.execute(
            select(Job.created_at, Job.started_at, Job.finished_at, Result.inference_ms)
            .join(Result, Result.job_id == Job.id)
            .where(Job.created_at >= since, Job.started_at.is_not(None))
        ).all()
    phases: dict[str, list[float]] = {"claim_wait_ms": [], "worker_run_ms": [], "forward_ms": []}
    for created, started, finished, forward in rows:
        assert started is not None and finished is not None, "a job with a result has ended"
        phases["claim_wait_ms"].append((started - created).total_seconds() * 1000)
        phases["worker_run_ms"].append((finished - started).total_seconds() * 1000)
        phases["forward_ms"].append(forward)
    return {k: statistics.median(v) if v else float("nan") for k, v in phases.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0, help="Per load, each side.")
    parser.add_argument("--arch", choices=["cnn", "resnet18"], default="resnet18")
    parser.add_argument("--memory-stations", type=int, default=0)
    parser.add_argument("--postgres-url", default=None)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--out", type=Path, default=None, help="Default: a temporary folder.")
    opts = parser.parse_args()
    out = (opts.out or Path(tempfile.mkdtemp(prefix="eldefect-one-station-"))).resolve()
    ctx, files = standalone_context(
        out,
        seconds=opts.seconds,
        postgres_url=opts.postgres_url,
        redis_url=opts.redis_url,
        arch=opts.arch,
    )
    backend = "postgres+redis" if opts.postgres_url else "embedded"
    rounds: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    stack = Stack(ctx, backend=backend, root=out / backend, workers=1)
    with stack.running(), peer(ctx, "sync_predict") as (peer_url, _pid):
        for i in range(opts.rounds):
            since = datetime.now(UTC)
            ours = stack.load(files, 1) | server_phases(stack.database_url, since)
            theirs = run_load(ctx, url=peer_url, mode="predict", files=files, stations=1)
            rounds.append({"ours": ours, "peer": theirs, "load": os.getloadavg()[0]})
            print(
                f"round {i + 1}: ours p50 {ours['p50_ms']:.1f} ms ({ours['succeeded']} jobs: "
                f"upload {ours['upload_p50_ms']:.1f}, claim wait {ours['claim_wait_ms']:.1f}, "
                f"worker run {ours['worker_run_ms']:.1f} of which forward "
                f"{ours['forward_ms']:.1f}), peer p50 {theirs['p50_ms']:.1f} ms, difference "
                f"{ours['p50_ms'] - theirs['p50_ms']:+.1f} ms, load {rounds[-1]['load']:.2f}",
                flush=True,
            )
        at_rest = stack.peak_rss()["gateway_mib"]
        crowd = stack.load(files, opts.memory_stations) if opts.memory_stations else None
        memory = stack.peak_rss()
    summary = {
        "backend": backend,
        "arch": opts.arch,
        "ours_p50_ms": statistics.median(r["ours"]["p50_ms"] for r in rounds),
        "peer_p50_ms": statistics.median(r["peer"]["p50_ms"] for r in rounds),
        "difference_ms": statistics.median(
            r["ours"]["p50_ms"] - r["peer"]["p50_ms"] for r in rounds
        ),
        **{
            key: statistics.median(r["ours"][key] for r in rounds)
            for key in ("upload_p50_ms", "claim_wait_ms", "worker_run_ms", "forward_ms")
        },
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "gateway_peak_rss_mib_one_station": at_rest,
        "memory_stations": opts.memory_stations,
        "gateway_peak_rss_mib": memory["gateway_mib"],
        "memory_load": crowd,
    }
    (out / "one_station.json").write_text(json.dumps({"summary": summary, "rounds": rounds}))
    print(json.dumps(summary))
    print(f"figures and logs under {out}")


if __name__ == "__main__":
    main()
