"""Service-level throughput: submit images to a running gateway as stations would.

Measures what a station sees end to end (upload, queue, batched inference, long-poll):
images per second over the whole run and per-job latency percentiles.

    eldefect up &                                   # or the compose stack
    TOKEN=$(eldefect token create --station bench)
    python bench/serve_throughput.py --url http://127.0.0.1:8000 --token $TOKEN \
        --images DIR --n 200 --concurrency 16
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx


def one_job(client: httpx.Client, path: Path) -> tuple[float, str]:
    started = time.perf_counter()
    answer = client.post("/v1/jobs", files={"file": (path.name, path.read_bytes())})
    answer.raise_for_status()
    job = answer.json()
    while job["status"] not in ("succeeded", "failed"):
        job = client.get(f"/v1/jobs/{job['id']}", params={"wait": 30}).json()
    return time.perf_counter() - started, job["status"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--token", required=True)
    parser.add_argument("--images", type=Path, required=True, help="A folder of images.")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    opts = parser.parse_args()

    suffixes = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
    pool = sorted(p for p in opts.images.rglob("*") if p.suffix.lower() in suffixes)
    if not pool:
        raise SystemExit(f"no images under {opts.images}")
    paths = [pool[i % len(pool)] for i in range(opts.n)]
    headers = {"Authorization": f"Bearer {opts.token}"}
    with (
        httpx.Client(base_url=opts.url, headers=headers, timeout=60) as client,
        ThreadPoolExecutor(opts.concurrency) as executor,
    ):
        started = time.perf_counter()
        results = list(executor.map(lambda p: one_job(client, p), paths))
        elapsed = time.perf_counter() - started
    latencies = sorted(r[0] for r in results)
    failed = sum(status != "succeeded" for _, status in results)
    print(f"{opts.n} jobs, concurrency {opts.concurrency}: {opts.n / elapsed:.1f} images/s")
    print(
        f"latency median {statistics.median(latencies) * 1000:.0f} ms, "
        f"p95 {latencies[int(0.95 * (len(latencies) - 1))] * 1000:.0f} ms, "
        f"max {latencies[-1] * 1000:.0f} ms; failed {failed}"
    )


if __name__ == "__main__":
    main()
