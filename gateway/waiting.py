"""Long-poll support for `GET /v1/jobs/{id}?wait=S` without a busy loop per request.

One `JobWatcher` per process: requests register the job id they hold and sleep on an
asyncio.Event. Two things wake them:

- on PostgreSQL, the workers' NOTIFY on `JOB_ENDED_CHANNEL` when a job ends (sent at the
  commit that ends it): a listener thread holds one LISTEN connection and wakes the
  requests of the ids it names, at once;
- a single background task that checks all watched ids with ONE query every `interval_s`:
  the only wake-up on SQLite, and the fallback on PostgreSQL for a notification missed
  while the listener reconnects or a waiter registered just after its job's notification.
The task runs only while someone waits, so an idle gateway sends no queries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from db.jobs import finished_job_ids
from db.lifecycle import JOB_ENDED_CHANNEL

log = logging.getLogger(__name__)

_LISTEN_RETRY_S = 2.0  # after a lost LISTEN connection; the poll covers the gap


def listen_conninfo(database_url: str) -> str | None:
    """The libpq URL to LISTEN on for a PostgreSQL database URL; None for other databases."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        return None
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class _Listener(threading.Thread):
    """LISTENs on one connection and hands each notified batch of ids to `wake`."""

    def __init__(self, conninfo: str, wake: Callable[[list[str]], None]) -> None:
        super().__init__(name="eldefect-job-listener", daemon=True)
        self.conninfo, self.wake = conninfo, wake
        self.stopping = threading.Event()
        self.listening = threading.Event()  # set while a LISTEN connection is open

    def run(self) -> None:
        import psycopg

        failing = False
        while not self.stopping.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {JOB_ENDED_CHANNEL}")
                    self.listening.set()
                    if failing:
                        log.info("job listener receives notifications again")
                    failing = False
                    while not self.stopping.is_set():
                        for note in conn.notifies(timeout=1.0):
                            self.wake(note.payload.split(","))
            except psycopg.Error as exc:  # the poll still ends every wait meanwhile
                self.listening.clear()
                if not failing:
                    log.warning("job listener lost its connection (%s); polling only", exc)
                failing = True
                self.stopping.wait(_LISTEN_RETRY_S)


class JobWatcher:
    def __init__(
        self,
        session_factory: Callable[[], Session],
        *,
        interval_s: float,
        listen: str | None = None,
    ) -> None:
        """`listen`: a libpq URL (`listen_conninfo`) to receive ended jobs on, if any."""
        self._session_factory = session_factory
        self.interval_s = interval_s
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self._failing = False  # log an outage once, not on every poll
        self._listen = listen
        self._listener: _Listener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def watched(self) -> int:
        return len(self._waiters)

    def wait_listening(self, timeout_s: float) -> bool:
        """True once notifications are being received (False without a listener)."""
        listener = self._listener
        return listener is not None and listener.listening.wait(timeout_s)

    async def wait(self, job_id: str, timeout_s: float) -> bool:
        """Sleep until the job ends or `timeout_s` passes; True when it ended."""
        event = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(event)
        self._ensure_running()
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            events = self._waiters.get(job_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiters[job_id]

    def _ensure_running(self) -> None:
        loop = asyncio.get_running_loop()
        task = self._task
        if task is None or task.done() or task.get_loop() is not loop:
            self._task = loop.create_task(self._run(), name="eldefect-job-watcher")
        self._loop = loop
        if self._listen is not None and self._listener is None:
            self._listener = _Listener(self._listen, self._notified)
            self._listener.start()

    def _notified(self, job_ids: list[str]) -> None:
        """From the listener thread: wake the waiters of these ids on their loop."""
        loop = self._loop
        # The loop may close as the gateway stops; its waiters are gone with it.
        with contextlib.suppress(RuntimeError):
            if loop is not None:
                loop.call_soon_threadsafe(self._wake, job_ids)

    def _wake(self, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:
            for event in self._waiters.get(job_id, ()):
                event.set()

    def _finished(self, job_ids: list[str]) -> set[str]:
        with self._session_factory() as session:
            return finished_job_ids(session=session, job_ids=job_ids)

    async def _run(self) -> None:
        # No await between seeing no waiters and returning, so a new waiter either is seen
        # here or finds this task done and starts a new one.
        while self._waiters:
            await asyncio.sleep(self.interval_s)
            ids = list(self._waiters)
            if not ids:
                continue
            try:
                done = await asyncio.to_thread(self._finished, ids)
            except SQLAlchemyError as exc:  # the waiters time out and answer the state they read
                if not self._failing:
                    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    log.warning("job watcher cannot read job states: %s", first_line)
                self._failing = True
                continue
            if self._failing:
                log.info("job watcher reads job states again")
            self._failing = False
            self._wake(done)

    async def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.stopping.set()
        task, self._task = self._task, None
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
