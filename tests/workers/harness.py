"""Helpers to run real `eldefect worker` / `beat` / `up` processes in tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from sqlalchemy import func, select

from db.models import Job, JobStatus, Result
from db.session import session_scope
from workers.cli import eldefect_argv


class Proc:
    """A child `eldefect` process in its own session, its output in a log file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self._out = log.open("ab")
        self.popen = subprocess.Popen(
            [*eldefect_argv(), *args],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text():
                return
            if self.popen.poll() is not None:
                raise AssertionError(
                    f"process exited ({self.popen.returncode}):\n{self.text()[-3000:]}"
                )
            time.sleep(0.1)
        raise AssertionError(f"{needle!r} not seen in {timeout} s:\n{self.text()[-3000:]}")

    def pause(self) -> None:
        """SIGSTOP the whole process group: it holds whatever it holds until resumed or killed."""
        os.killpg(self.popen.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.popen.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the whole process group: no clean shutdown, no ack."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 30.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._out.close()
        return self.popen.returncode


def start_worker(tmp: Path, name: str = "worker", **env: str) -> Proc:
    proc = Proc(
        ["worker", "--queue", "inference.cpu", "--name", f"{name}.{time.monotonic_ns()}@test"],
        tmp / f"{name}.log",
        env,
    )
    proc.wait_for(" ready.")
    proc.wait_for("workers.model_cache: serving ")  # the first model is loaded
    return proc


def statuses(url: str, ids: Iterable[str] | None = None) -> dict[str, JobStatus]:
    with session_scope(url) as session:
        query = select(Job.id, Job.status)
        if ids is not None:
            query = query.where(Job.id.in_(list(ids)))
        return {job_id: status for job_id, status in session.execute(query)}


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    log: Callable[[], str] = str,
    procs: Iterable[Proc] = (),
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        for proc in procs:
            if proc.popen.poll() is not None:
                raise AssertionError(
                    f"{proc.log.name} died while waiting for {what}:\n{log()[-4000:]}"
                )
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{log()[-4000:]}")


def wait_all_finished(
    url: str,
    ids: list[str],
    timeout: float,
    log: Callable[[], str] = str,
    procs: Iterable[Proc] = (),
) -> dict[str, JobStatus]:
    def done() -> bool:
        return all(
            s in (JobStatus.succeeded, JobStatus.failed) for s in statuses(url, ids).values()
        )

    try:
        wait_until(done, timeout, f"{len(ids)} jobs to finish", log, procs)
    except AssertionError as exc:
        counts: dict[str, int] = {}
        for s in statuses(url, ids).values():
            counts[s] = counts.get(s, 0) + 1
        raise AssertionError(f"{counts}: {exc}") from None
    return statuses(url, ids)


def result_count(url: str) -> int:
    with session_scope(url) as session:
        return int(session.scalar(select(func.count()).select_from(Result)) or 0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
