"""Faults survived: PostgreSQL and Redis restarted under real gateway, worker and beat processes.

Each test runs a server of its own (tests/workers/private_services.py) so that it can stop it;
stations speak HTTP to a real `eldefect gateway`. The figures they print are the ones quoted
in docs/serving.md ("Faults survived"); run with `-s` to see them.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from db import jobs as crud
from db.lifecycle import as_utc
from db.migrate import upgrade
from db.models import Job, JobStatus, Result
from db.session import get_engine, session_scope
from eldefect.settings import get_settings
from tests.workers.conftest import TinyRegistry
from tests.workers.factories import png_bytes
from tests.workers.harness import Proc, free_port, start_worker, statuses, wait_until
from tests.workers.private_services import PrivatePostgres, PrivateRedis

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

FINISHED = (JobStatus.succeeded, JobStatus.failed)


@dataclass
class Answer:
    at: float  # time.monotonic() when the answer came
    status: int  # 0: no answer (connection refused, timeout)
    body: dict[str, object] = field(default_factory=dict)


class Stations:
    """Threads that each submit one image after another over HTTP until stopped."""

    def __init__(self, base: str, token: str, count: int, pause_s: float = 0.05) -> None:
        self.base, self.token, self.pause_s = base, token, pause_s
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(count)
        ]

    def __enter__(self) -> Stations:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, station: int) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.base, headers=headers, timeout=20) as http:
            n = 0
            while not self._stop.is_set():
                n += 1
                image = png_bytes(station * 100_000 + n)
                try:
                    reply = http.post("/v1/jobs", files={"file": ("cell.png", image, "image/png")})
                    answer = Answer(time.monotonic(), reply.status_code, _json(reply))
                except httpx.HTTPError:
                    answer = Answer(time.monotonic(), 0)
                with self._lock:
                    self.answers.append(answer)
                self._stop.wait(self.pause_s)

    def accepted(self) -> list[str]:
        with self._lock:
            return [str(a.body["id"]) for a in self.answers if a.status == 202]

    def count(self) -> int:
        with self._lock:
            return len(self.answers)


def _json(reply: httpx.Response) -> dict[str, object]:
    try:
        body = reply.json()
    except ValueError:
        return {"unparsed": reply.text[:200]}
    return body if isinstance(body, dict) else {"unparsed": body}


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Stack:
    base: str
    token: str
    gateway: Proc
    worker: Proc
    beat: Proc

    def logs(self) -> str:
        return "\n".join(f"--- {p.log.name}\n{p.text()[-3000:]}" for p in self.procs)

    @property
    def procs(self) -> list[Proc]:
        return [self.gateway, self.worker, self.beat]


# (database_url, broker_url, **ELDEFECT_* settings) -> a started stack
StackFactory = Callable[..., Stack]


@pytest.fixture
def stack_factory(
    served_model: TinyRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[StackFactory]:
    """Start gateway, one worker and beat on the given database and broker."""
    started: list[Stack] = []

    def start(database_url: str, broker_url: str, **env: str) -> Stack:
        monkeypatch.setenv("ELDEFECT_DATABASE_URL", database_url)
        monkeypatch.setenv("ELDEFECT_BROKER_URL", broker_url)
        for key, value in env.items():
            monkeypatch.setenv(f"ELDEFECT_{key.upper()}", value)
        get_settings.cache_clear()
        upgrade(database_url)
        with session_scope(database_url) as session:
            station = crud.get_or_create_station(session=session, name="line-1")
            token = crud.create_token(session=session, station_id=station.id)
        port = free_port()
        gateway = Proc(["gateway", "--port", str(port), "--no-migrate"], tmp_path / "gateway.log")
        beat = Proc(["beat"], tmp_path / "beat.log")
        worker = start_worker(tmp_path)
        stack = Stack(f"http://127.0.0.1:{port}", token, gateway, worker, beat)
        started.append(stack)
        wait_until(lambda: _healthy(stack.base), 60, "the gateway", gateway.text, [gateway])
        return stack

    yield start
    for stack in started:
        for proc in stack.procs:
            if proc.popen.poll() is None:
                os.kill(proc.popen.pid, signal.SIGCONT)  # in case a test left it stopped
            proc.stop(timeout=20)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    cluster = PrivatePostgres()
    cluster.start()
    yield cluster
    get_engine(cluster.url).dispose()
    cluster.remove()


def _results_per_job(url: str, ids: list[str]) -> Counter[str]:
    with session_scope(url) as session:
        rows = session.execute(
            select(Result.job_id, func.count())
            .where(Result.job_id.in_(ids))
            .group_by(Result.job_id)
        )
        return Counter({job_id: int(n) for job_id, n in rows})


def _wait_finished(url: str, ids: list[str], stack: Stack, timeout: float) -> None:
    """Wait until every job in `ids` has ended (fails past `timeout`)."""

    def done() -> bool:
        try:
            return all(s in FINISHED for s in statuses(url, ids).values())
        except Exception:
            return False

    wait_until(done, timeout, f"{len(ids)} accepted jobs to end", stack.logs, stack.procs)


def test_postgres_restart_loses_nothing_and_drains_within_30_s_of_its_return(
    stack_factory: StackFactory, private_postgres: PrivatePostgres, redis_url: str
) -> None:
    url = private_postgres.url
    stack = stack_factory(url, redis_url)
    worker_pid = stack.worker.popen.pid

    with Stations(stack.base, stack.token, count=4) as stations:
        time.sleep(6)  # traffic flowing, batches in flight
        before = stations.count()
        down_at = time.monotonic()
        private_postgres.stop()
        time.sleep(5)  # the outage: stations keep submitting
        private_postgres.start()
        back_at, back_wall = time.monotonic(), datetime.now(UTC)
        time.sleep(3)  # and keep submitting after its return
    accepted = stations.accepted()
    _wait_finished(url, accepted, stack, timeout=60)
    drain_s = time.monotonic() - back_at

    final = statuses(url, accepted)
    before_return = [
        str(a.body["id"]) for a in stations.answers if a.status == 202 and a.at < back_at
    ]
    with session_scope(url) as session:
        last = session.scalar(select(func.max(Job.finished_at)).where(Job.id.in_(before_return)))
    in_flight_s = (as_utc(last) - back_wall).total_seconds() if last else float("nan")
    per_job = _results_per_job(url, accepted)
    during = [a for a in stations.answers if down_at <= a.at <= back_at + 1]
    codes = Counter(a.status for a in stations.answers)
    tracebacks = {p.log.name: p.text().count("Traceback") for p in stack.procs}
    print(
        f"\nFIGURES postgres restart: {len(stations.answers)} answers ({before} before the "
        f"outage), {len(accepted)} accepted (202), answers by status {dict(codes)}, during the "
        f"outage {dict(Counter(a.status for a in during))}; the jobs accepted before its return "
        f"had all ended {in_flight_s:.1f} s after it, every accepted job {drain_s:.1f} s after "
        f"it (stations kept submitting for 3 s); tracebacks in logs {tracebacks}"
    )
    assert len(accepted) > 20, "the stations got too little through to measure anything"
    assert Counter(final.values()) == Counter({JobStatus.succeeded: len(accepted)})
    assert set(per_job) == set(accepted) and set(per_job.values()) == {1}, "none twice"
    assert drain_s <= 30, f"took {drain_s:.1f} s after the database returned"
    assert stack.worker.popen.poll() is None and stack.worker.popen.pid == worker_pid
    assert stack.gateway.popen.poll() is None
    for answer in stations.answers:
        if answer.status >= 500:  # the contract's error shape, never a stack trace
            error = answer.body.get("error")
            assert isinstance(error, dict) and set(error) == {"code", "message"}, answer.body
            assert "Traceback" not in str(error["message"])
    # While the database is away the gateway answers 503 database_unavailable, never a 500.
    assert codes[500] == 0, f"{codes[500]} answers were 500 during the outage"
    unavailable = [a.body.get("error") for a in stations.answers if a.status == 503]
    assert all(isinstance(e, dict) and e["code"] == "database_unavailable" for e in unavailable)


def test_redis_restart_with_jobs_waiting_loses_nothing_and_needs_no_worker_restart(
    stack_factory: StackFactory, postgres_url: str, tmp_path: Path
) -> None:
    broker = PrivateRedis(tmp_path / "redis.log")
    broker.start()
    try:
        # A short requeue delay: the restart loses every waiting message, and the sweep's
        # re-send is how those jobs come back (the default waits a minute).
        stack = stack_factory(postgres_url, broker.url, requeue_after_s="3", sweep_interval_s="1")
        worker_pid = stack.worker.popen.pid
        headers = {"Authorization": f"Bearer {stack.token}"}
        with httpx.Client(base_url=stack.base, headers=headers, timeout=20) as http:

            def submit(n: int, offset: int) -> list[str]:
                ids = []
                for i in range(n):
                    image = png_bytes(offset + i)
                    reply = http.post("/v1/jobs", files={"file": ("c.png", image, "image/png")})
                    assert reply.status_code == 202, reply.text
                    ids.append(reply.json()["id"])
                return ids

            served = submit(5, 0)  # the worker is connected and serving
            _wait_finished(postgres_url, served, stack, timeout=60)
            os.kill(worker_pid, signal.SIGSTOP)  # frozen: what is sent now waits in Redis
            waiting = submit(30, 1000)
            broker.stop()  # no persistence: every waiting message is gone
            broker.start()
            after = submit(10, 2000)  # the gateway reconnects on its own
            resumed_at = time.monotonic()
            os.kill(worker_pid, signal.SIGCONT)
            ids = served + waiting + after
            _wait_finished(postgres_url, ids, stack, timeout=90)
            drain_s = time.monotonic() - resumed_at
    finally:
        broker.stop()
    final = statuses(postgres_url, ids)
    print(
        f"\nFIGURES redis restart: {len(waiting)} jobs waiting in Redis when it restarted, "
        f"{len(after)} sent after; all {len(ids)} succeeded {drain_s:.1f} s after the worker "
        f"resumed"
    )
    assert Counter(final.values()) == Counter({JobStatus.succeeded: len(ids)})
    assert set(_results_per_job(postgres_url, ids).values()) == {1}
    assert stack.worker.popen.poll() is None and stack.worker.popen.pid == worker_pid
    assert stack.beat.popen.poll() is None and stack.gateway.popen.poll() is None
