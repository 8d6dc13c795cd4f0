"""The benchmark's load generator: S stations sending images over HTTP, as stations would.

A separate process (`python -m workers.benchmark.loadgen ...`), so that the server under test
and the client never share an interpreter. Each station sends one image, waits for its answer,
then sends the next. Three ways to talk to a server, one per system compared:

- `eldefect`: POST /v1/jobs, then GET /v1/jobs/{id}?wait= until the job has ended (the
  latency is from the upload to the ended job seen by the station);
- `predict`: POST /predict with the image as a multipart file (a synchronous server);
- `invocations`: POST /invocations with a prepared JSON body (MLflow's scoring server).

Bounded: no new request after `--jobs` requests or `--seconds`, and the whole run ends
`--grace` seconds after that. Prints one JSON object with the figures.

The client must cost the servers as little CPU as it can, since it shares their cores: so
aiohttp, and multipart bodies encoded once per file at start rather than once per request
(together a seventh of the CPU per job the httpx client took: docs/performance.md, round four).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import httpx

ENDED = ("succeeded", "failed")
PATHS = {"eldefect": "/v1/jobs", "predict": "/predict", "invocations": "/invocations"}


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100); NaN when empty."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


class Load:
    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        paths = [p for p in sorted(opts.files.iterdir()) if p.is_file()]
        if not paths:
            raise SystemExit(f"no files under {opts.files}")
        self.files = [body(opts.mode, p) for p in paths]
        self.issued = 0
        self.latencies: list[float] = []
        self.uploads: list[float] = []  # eldefect: until the upload's answer (202)
        self.outcomes: Counter[str] = Counter()
        self.deadline = 0.0
        self.last_end = 0.0

    def _next(self) -> tuple[bytes, dict[str, str]] | None:
        if self.issued >= self.opts.jobs or time.monotonic() >= self.deadline:
            return None
        self.issued += 1
        return self.files[self.issued % len(self.files)]

    async def _one(
        self, client: aiohttp.ClientSession, data: bytes, headers: dict[str, str]
    ) -> str:
        mode = self.opts.mode
        started = time.perf_counter()
        # Every body is read to its end: aiohttp closes a connection whose body was not.
        async with client.post(PATHS[mode], data=data, headers=headers) as answer:
            status, payload = answer.status, await answer.read()
        if mode != "eldefect" or status not in (200, 202):
            return "succeeded" if status == 200 else f"http_{status}"
        self.uploads.append(time.perf_counter() - started)
        job = json.loads(payload)
        while job["status"] not in ENDED:
            async with client.get(f"/v1/jobs/{job['id']}", params={"wait": 30}) as answer:
                status, payload = answer.status, await answer.read()
            if status != 200:
                return f"http_{status}"
            job = json.loads(payload)
        return str(job["status"]) if job["status"] == "succeeded" else f"failed_{job['error']}"

    async def station(self, client: aiohttp.ClientSession) -> None:
        while (item := self._next()) is not None:
            started = time.perf_counter()
            try:
                outcome = await self._one(client, *item)
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcome = f"error_{type(exc).__name__}"
            self.outcomes[outcome] += 1
            if outcome == "succeeded":
                self.latencies.append(time.perf_counter() - started)
            self.last_end = time.perf_counter()

    async def run(self) -> dict[str, Any]:
        opts = self.opts
        headers = {"Authorization": f"Bearer {opts.token}"} if opts.token else {}
        connector = aiohttp.TCPConnector(limit=opts.stations + 4)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(
            opts.url, headers=headers, timeout=timeout, connector=connector
        ) as client:
            started = time.perf_counter()
            self.deadline = time.monotonic() + opts.seconds
            tasks = [asyncio.create_task(self.station(client)) for _ in range(opts.stations)]
            _done, pending = await asyncio.wait(tasks, timeout=opts.seconds + opts.grace)
            for task in pending:
                task.cancel()
        elapsed = max(self.last_end - started, 1e-9)
        ok = sorted(self.latencies)
        return {
            "mode": opts.mode,
            "stations": opts.stations,
            "requests": self.issued,
            "succeeded": len(ok),
            "not_succeeded": sum(n for k, n in self.outcomes.items() if k != "succeeded"),
            "unfinished": len(pending),
            "outcomes": dict(self.outcomes),
            "seconds": elapsed,
            "images_per_s": len(ok) / elapsed,
            "p50_ms": percentile(ok, 50) * 1000,
            "p95_ms": percentile(ok, 95) * 1000,
            "p99_ms": percentile(ok, 99) * 1000,
            "upload_p50_ms": percentile(sorted(self.uploads), 50) * 1000,
        }


def body(mode: str, path: Path) -> tuple[bytes, dict[str, str]]:
    """The request body for one file and its Content-Type header: the file as it is for
    `invocations` (a prepared JSON body), else a multipart form with the file as `file`."""
    data = path.read_bytes()
    if mode == "invocations":
        return data, {"Content-Type": "application/json"}
    form = httpx.Request("POST", "http://station", files={"file": (path.name, data)})
    return form.read(), {"Content-Type": form.headers["Content-Type"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--mode", choices=list(PATHS), required=True)
    parser.add_argument("--token", default="")
    parser.add_argument("--files", type=Path, required=True, help="A folder of request bodies.")
    parser.add_argument("--stations", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--grace", type=float, default=60.0)
    opts = parser.parse_args()
    print(json.dumps(asyncio.run(Load(opts).run())))


if __name__ == "__main__":
    main()
