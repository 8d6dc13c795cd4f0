"""Claims a worker could not hand back because the database was away, kept until it returns.

A batch that loses the database (restart, failover) after claiming its jobs cannot store their
results, and cannot hand them back to `queued` either: the release is a database write too.
Left alone they would wait out their lease (`running_timeout_s`, minutes) before the sweep
requeues them. So the worker keeps them in memory: a thread tries the release every
`retry_s` seconds, and once the database answers it releases them and sends wake-up
messages, so they are served seconds after the database is back, not at the end of the lease.

Held in memory only: if this process dies as well, the lease and the sweep still cover them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from itertools import groupby

from db import lifecycle
from db.session import session_scope

log = logging.getLogger(__name__)


def release_claims(url: str, jobs: Sequence[lifecycle.ClaimedJob]) -> list[str]:
    """Hand these claims back to `queued` in one transaction; returns the ids released.

    Each claim is released only if it is still the job's current one (its `started_at`), so
    a late release never undoes a later claim by another worker.
    """
    released: list[str] = []
    with session_scope(url) as session:
        by_claim = sorted(jobs, key=lambda job: job.started_at)
        for started_at, group in groupby(by_claim, key=lambda job: job.started_at):
            released += lifecycle.release_jobs(
                session=session, job_ids=[job.id for job in group], started_at=started_at
            )
    return released


class HeldClaims:
    """Claims waiting for the database; one per worker process, thread-safe."""

    def __init__(
        self,
        *,
        release: Callable[[Sequence[lifecycle.ClaimedJob]], list[str]],
        wake: Callable[[list[str]], object],
        retry_s: float = 1.0,
    ) -> None:
        self._release = release
        self._wake = wake
        self.retry_s = retry_s
        self._jobs: dict[str, lifecycle.ClaimedJob] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def hold(self, jobs: Sequence[lifecycle.ClaimedJob]) -> None:
        """Keep these claims and release them as soon as the database answers."""
        if not jobs:
            return
        with self._lock:
            self._jobs.update({job.id: job for job in jobs})
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="eldefect-held-claims", daemon=True
                )
                self._thread.start()
        log.warning(
            "holding %d claimed job(s) until the database answers again, then handing them back",
            len(jobs),
        )

    def held(self) -> list[str]:
        with self._lock:
            return sorted(self._jobs)

    def wait_empty(self, timeout: float) -> bool:
        """For tests and shutdown: wait until every held claim has been handed back."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.held()

    def _run(self) -> None:
        while True:
            with self._lock:
                jobs = list(self._jobs.values())
                if not jobs:
                    self._thread = None
                    return
            try:
                released = self._release(jobs)
            except Exception as exc:  # the database is still away (or failing): try again
                log.debug("held claims: release failed (%s); retrying", type(exc).__name__)
                time.sleep(self.retry_s)
                continue
            with self._lock:
                for job in jobs:
                    self._jobs.pop(job.id, None)
            log.warning(
                "database back: handed %d held job(s) back to the queue (%d were already "
                "finished or taken by another claim)",
                len(released),
                len(jobs) - len(released),
            )
            try:
                self._wake(released)
            except Exception:  # the broker is down too: the sweep re-sends queued jobs later
                log.warning("could not send wake-ups for %d released job(s)", len(released))
