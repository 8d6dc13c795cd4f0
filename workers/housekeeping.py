"""Each worker's own housekeeping thread: its heartbeat, and the sweep.

Both run beside the worker's pool, never through the broker: a sweep sent as a message used
to wait behind the very backlog it was meant to rescue, and a worker busy with a long batch
must still say it is alive. The sweep is idempotent and safe to run from every worker at once
(each transition in db/lifecycle.py is a conditional UPDATE), so no worker is special.

The heartbeat is one row per worker in the database (db/workers.py): its queue, its device,
the model version it serves or why it cannot load one. The gateway reads it to route jobs and
for /readyz; the sweep reads it to re-send lost jobs to a queue with live workers and to fail
jobs that no worker can serve.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from db.session import DATABASE_OUTAGES, session_scope
from db.workers import record_heartbeat, remove_worker
from eldefect.settings import Settings
from workers.inference import BATCHES, run_sweep
from workers.model_cache import ModelState

log = logging.getLogger(__name__)

Send = Callable[[str, str], object]


class Housekeeper:
    """Heartbeat every `heartbeat_interval_s`, sweep every `sweep_interval_s` (if enabled)."""

    def __init__(
        self,
        *,
        settings: Settings,
        name: str,
        queue: str,
        model_state: Callable[[], ModelState] | None,
        send: Send,
        sweep: bool,
    ) -> None:
        self.settings, self.name, self.queue = settings, name, queue
        self._model_state = model_state
        self._send = send
        self._sweep = sweep
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def heartbeat(self) -> None:
        state = self._model_state() if self._model_state is not None else None
        batch_s, lease_s = BATCHES.longest_s(), self.settings.running_timeout_s
        if state is not None and batch_s > lease_s:
            state = ModelState(
                version=None,
                error=f"a batch has been running for {batch_s:.0f} s, past its "
                f"{lease_s:g} s lease: this worker looks stuck",
            )
        with session_scope(self.settings.database_url) as session:
            record_heartbeat(
                session=session,
                name=self.name,
                queue=self.queue,
                device=self.settings.inference_device,
                model_name=self.settings.model_name if state is not None else None,
                model_version=state.version if state is not None else None,
                model_error=state.error if state is not None else None,
            )

    def run(self) -> None:
        """Until stopped: each task when it is due; a failure is logged and tried next time."""
        due = {"heartbeat": 0.0, "sweep": 0.0}
        intervals = {
            "heartbeat": self.settings.heartbeat_interval_s,
            "sweep": self.settings.sweep_interval_s,
        }
        tasks: dict[str, Callable[[], object]] = {"heartbeat": self.heartbeat}
        if self._sweep:
            tasks["sweep"] = lambda: run_sweep(settings=self.settings, send=self._send)
        while not self._stop.is_set():
            for name, task in tasks.items():
                if time.monotonic() < due[name]:
                    continue
                due[name] = time.monotonic() + intervals[name]
                try:
                    task()
                except DATABASE_OUTAGES as exc:  # the database is away
                    text = str(getattr(exc, "orig", None) or exc).strip()
                    reason = text.splitlines()[0] if text else type(exc).__name__
                    log.warning(
                        "%s: database unavailable (%s); trying again in %g s",
                        name,
                        reason[:200],
                        intervals[name],
                    )
                except Exception:  # anything else is a bug to see, but must not end the thread
                    log.exception("%s failed; trying again in %g s", name, intervals[name])
            self._stop.wait(max(0.0, min(due[n] for n in tasks) - time.monotonic()))

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="eldefect-housekeeping", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and delete this worker's row, so routing forgets it at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        try:
            with session_scope(self.settings.database_url) as session:
                remove_worker(session=session, name=self.name)
        except Exception:  # the row goes stale on its own
            log.warning("could not remove worker %s from the workers table", self.name)
