"""Long-poll support for `GET /v1/jobs/{id}?wait=S` without a busy loop per request.

One `JobWatcher` per process: requests register the job id they hold and sleep on an
asyncio.Event; a single background task checks all watched ids with ONE query every
`interval_s` and wakes the requests whose job has ended. The task runs only while someone
waits, so an idle gateway sends no queries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from db.jobs import finished_job_ids

log = logging.getLogger(__name__)


class JobWatcher:
    def __init__(self, session_factory: Callable[[], Session], *, interval_s: float) -> None:
        self._session_factory = session_factory
        self.interval_s = interval_s
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self._failing = False  # log an outage once, not on every poll

    @property
    def watched(self) -> int:
        return len(self._waiters)

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
            for job_id in done:
                for event in self._waiters.get(job_id, ()):
                    event.set()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
