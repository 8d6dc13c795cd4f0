"""Soak: N jobs from S concurrent stations; one worker SIGKILLed and restarted midway.

Starts its own gateway, workers and beat on the database and broker of the environment
(PostgreSQL and Redis are what it is for), creates a station token, and lets S station
threads submit N small images over HTTP on loopback. When half of them are accepted it
SIGKILLs one worker and starts a new one. Then it checks what the issue asks of it:

- lost: jobs that got a 202 but did not end `succeeded` (also as the API reports them);
- doubled: jobs with more than one result, or one job id answered to two uploads;
- RSS of the gateway and of the worker that was not killed, after warm-up and at the end.

Bounded: N jobs, one run, --timeout seconds in all; every child is stopped at the end.
Exit status 1 when a job is lost or doubled, the run times out, or RSS grew more than
--max-rss-growth.

    export ELDEFECT_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/soak
    export ELDEFECT_BROKER_URL=redis://127.0.0.1:6379/3
    eldefect train ... && eldefect promote ...     # a model under the production alias
    python bench/soak.py --n 2000 --stations 32
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from numpy.random import default_rng
from PIL import Image
from sqlalchemy import func, select

from db import jobs as crud
from db.migrate import upgrade
from db.models import Job, JobStatus, Result
from db.session import session_scope
from eldefect.settings import get_settings
from workers.cli import eldefect_argv

FINISHED = (JobStatus.succeeded, JobStatus.failed)


class Child:
    """One `eldefect` child process in its own process group, output to a log file."""

    def __init__(self, name: str, args: list[str], logs: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log = logs / f"{name}.log"
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                [*eldefect_argv(), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def wait_for(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.log.read_text(errors="replace"):
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{self.name} did not get to {needle!r}; see {self.log}")
            time.sleep(0.2)

    def rss_mib(self) -> float:
        """Resident set size of the process, from /proc (Linux)."""
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS for {self.name}")

    def kill(self) -> None:
        os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def png(seed: int, size: int) -> bytes:
    pixels = (default_rng(seed).random((size, size)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Stations:
    """S threads submitting N images in all; a refused or unanswered upload is retried with
    the same Idempotency-Key, as a careful station would, so a retry cannot make a second job."""

    def __init__(self, base: str, token: str, n: int, image_size: int, deadline: float) -> None:
        self.base, self.token, self.n = base, token, n
        self.run_id = uuid.uuid4().hex[:8]  # idempotency keys of this run only
        self.image_size, self.deadline = image_size, deadline
        self._next = itertools.count()
        self.lock = threading.Lock()
        self.accepted: dict[int, str] = {}  # upload number -> job id
        self.retries = 0

    def run(self, _station: int) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.base, headers=headers, timeout=30) as http:
            while (i := next(self._next)) < self.n:
                self._submit(http, i)

    def _submit(self, http: httpx.Client, i: int) -> None:
        files = {"file": (f"cell{i}.png", png(i, self.image_size), "image/png")}
        while time.monotonic() < self.deadline:
            try:
                reply = http.post(
                    "/v1/jobs", files=files, headers={"Idempotency-Key": f"{self.run_id}-{i}"}
                )
                if reply.status_code == 202:
                    with self.lock:
                        self.accepted[i] = reply.json()["id"]
                    return
                if reply.status_code < 500:
                    raise SystemExit(f"upload {i} refused: {reply.status_code} {reply.text}")
            except httpx.HTTPError:
                pass
            with self.lock:
                self.retries += 1
            time.sleep(0.5)

    def count(self) -> int:
        with self.lock:
            return len(self.accepted)

    def wait_count(self, target: int, running: list[Future[None]]) -> None:
        """Until `target` uploads are accepted (or every station has stopped, or time is up)."""
        while self.count() < target and time.monotonic() < self.deadline:
            if all(future.done() for future in running):
                return
            time.sleep(0.05)


def job_states(url: str, ids: list[str]) -> tuple[dict[str, JobStatus], dict[str, int]]:
    """(status by job id, number of result rows by job id) for these jobs."""
    with session_scope(url) as session:
        status = {row.id: row.status for row in session.execute(select(Job.id, Job.status))}
        results = {
            job_id: int(n)
            for job_id, n in session.execute(
                select(Result.job_id, func.count()).group_by(Result.job_id)
            )
        }
    wanted = set(ids)
    return {k: v for k, v in status.items() if k in wanted}, results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="jobs in all")
    parser.add_argument("--stations", type=int, default=32, help="concurrent stations")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--image-size", type=int, default=64, help="side of each PNG, pixels")
    parser.add_argument("--lease-s", type=float, default=20.0, help="ELDEFECT_RUNNING_TIMEOUT_S")
    parser.add_argument("--timeout", type=float, default=900.0, help="bound on the whole run, s")
    parser.add_argument("--max-rss-growth", type=float, default=0.10)
    opts = parser.parse_args()

    settings = get_settings()
    url = settings.database_url
    upgrade(url)
    with session_scope(url) as session:
        station = crud.get_or_create_station(session=session, name="soak")
        token = crud.create_token(session=session, station_id=station.id)
    port = free_port()
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        # The killed worker's jobs come back when their lease ends: keep it short here.
        "ELDEFECT_RUNNING_TIMEOUT_S": str(opts.lease_s),
    }
    logs = Path(tempfile.mkdtemp(prefix="eldefect-soak-"))
    print(f"soak: {opts.n} jobs, {opts.stations} stations, {opts.workers} workers; logs {logs}")
    started = time.monotonic()
    deadline = started + opts.timeout
    gateway = Child("gateway", ["gateway", "--port", str(port), "--no-migrate"], logs, env)
    beat = Child("beat", ["beat"], logs, env)

    def worker(k: int) -> Child:
        name = f"worker{k}"
        return Child(name, ["worker", "--name", f"soak-{name}-{time.time_ns()}@%h"], logs, env)

    workers = [worker(k) for k in range(opts.workers)]
    children = [gateway, beat, *workers]
    try:
        for child in workers:
            child.wait_for("workers.model_cache: serving ", timeout=180)
        gateway.wait_for("Uvicorn running", timeout=60)
        stations = Stations(f"http://127.0.0.1:{port}", token, opts.n, opts.image_size, deadline)
        serving_from = time.monotonic()
        with ThreadPoolExecutor(opts.stations) as pool:
            running = [pool.submit(stations.run, s) for s in range(opts.stations)]
            stations.wait_count(opts.n // 5, running)  # warm-up: a fifth of the jobs
            warm = {"gateway": gateway.rss_mib(), "worker": workers[0].rss_mib()}
            stations.wait_count(opts.n // 2, running)
            workers[-1].kill()
            killed_at = stations.count()
            workers.append(worker(opts.workers))
            children.append(workers[-1])
            for future in running:
                future.result()
        ids = list(stations.accepted.values())
        while time.monotonic() < deadline:
            status, _ = job_states(url, ids)
            if all(s in FINISHED for s in status.values()):
                break
            time.sleep(0.5)
        drained = time.monotonic() - serving_from
        rss = {
            "gateway": (warm["gateway"], gateway.rss_mib()),
            "worker": (warm["worker"], workers[0].rss_mib()),
        }
        status, results = job_states(url, ids)
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        ) as http:
            via_api = [http.get(f"/v1/jobs/{job_id}").json()["status"] for job_id in ids]
        with session_scope(url) as session:
            rerun = session.scalar(
                select(func.count()).select_from(Job).where(Job.id.in_(ids), Job.attempts > 1)
            )
    finally:
        for child in reversed(children):
            child.stop()

    lost = sum(status.get(job_id) != JobStatus.succeeded for job_id in ids)
    lost_api = sum(s != "succeeded" for s in via_api)
    doubled = sum(results.get(job_id, 0) > 1 for job_id in ids) + (len(ids) - len(set(ids)))
    print(
        f"start-up {serving_from - started:.1f} s; accepted {len(ids)} of {opts.n} uploads "
        f"({stations.retries} retried), all ended {drained:.1f} s after the first upload "
        f"({len(ids) / drained:.1f} jobs/s); worker{opts.workers - 1} SIGKILLed at {killed_at} "
        f"accepted and replaced; {rerun} jobs ran again after the kill"
    )
    print(f"lost {lost} (API: {lost_api} not succeeded), doubled {doubled}")
    growth_ok = True
    for name, (before, after) in rss.items():
        growth = after / before - 1
        growth_ok &= growth <= opts.max_rss_growth
        print(
            f"{name} RSS: {before:.1f} MiB after warm-up, {after:.1f} MiB at the end "
            f"({growth:+.1%})"
        )
    ok = len(ids) == opts.n and lost == lost_api == doubled == 0 and growth_ok
    print("soak: " + ("ok" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
