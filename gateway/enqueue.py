"""Sending inference tasks BY NAME through a light Celery client (no workers import).

The database is the truth: a job is committed before its message is sent, and when the broker
is unreachable the job simply stays queued; the workers' periodic sweep re-sends it. A
message is a wake-up, not a job: one per `batch_size` jobs of a request, and on Redis none at
all while one is already pending for the queue (eldefect/wakeups.py).

Each message goes to an inference queue with live workers, read from the workers table
(`QueueRouter`, cached for `queue_cache_s`): GPU first, then CPU, else the configured
`inference_queue`. So a job never waits on a queue nobody listens to.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from db.session import session_scope
from db.workers import QueueCounts, live_workers
from eldefect.broker import INFER_TASK, RETRAIN_TASK, Queue, broker_options, route_inference
from eldefect.settings import Settings
from eldefect.wakeups import WakeMarker, one_per_batch, wake_marker
from gateway.metrics import ENQUEUE_FAILURES

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)


def create_celery_client(settings: Settings) -> Celery:
    """A Celery app used only to publish: no tasks, no result backend."""
    # Imported here, on the first send or /readyz: Celery and kombu are a fifth of the
    # gateway's start-up time, and the Enqueuer builds its client only when first used.
    from celery import Celery

    client = Celery("eldefect-gateway", set_as_current=False)
    client.conf.update(
        broker_options(settings),
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        task_create_missing_queues=True,
        # Fail fast when the broker is down: the request must not hang, the sweep re-sends.
        broker_connection_timeout=2.0,
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
    )
    return client


def read_queue_counts(settings: Settings) -> QueueCounts:
    with session_scope(settings.database_url) as session:
        workers = live_workers(session=session, stale_after_s=settings.worker_stale_after_s)
    return QueueCounts.of(workers, settings.model_name)


class QueueRouter:
    """The inference queue to send to now; one read of the workers table per `queue_cache_s`."""

    def __init__(
        self, settings: Settings, read: Callable[[Settings], QueueCounts] = read_queue_counts
    ) -> None:
        self.settings = settings
        self._read = read
        self._lock = threading.Lock()
        self._queue = settings.inference_queue.value
        self._read_at = float("-inf")

    def queue(self) -> str:
        with self._lock:
            if time.monotonic() - self._read_at < self.settings.queue_cache_s:
                return self._queue
            self._read_at = time.monotonic()
            try:
                counts = self._read(self.settings)
            except Exception as exc:  # the database briefly away: keep the last answer
                log.warning("cannot read live queues (%s); sending to %s", exc, self._queue)
                return self._queue
            self._queue = route_inference(
                counts.serving, counts.consumers, self.settings.inference_queue.value
            )
            return self._queue


class Enqueuer:
    """Publishes `eldefect.infer(job_id)` wake-ups to a live inference queue; one per app,
    thread-safe."""

    def __init__(
        self,
        settings: Settings,
        router: QueueRouter | None = None,
        marker: WakeMarker | None = None,
    ) -> None:
        self.settings = settings
        self.router = router or QueueRouter(settings)
        self.marker = marker or wake_marker(settings)
        self._client: Celery | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Celery:
        with self._lock:
            if self._client is None:
                self._client = create_celery_client(self.settings)
            return self._client

    def send(self, job_ids: Sequence[str]) -> list[str]:
        """Wake a worker for these committed jobs; returns the ids whose wake-up could not be
        sent (logged, counted). Nothing is sent while a wake-up for the queue is pending: the
        worker that takes it claims these jobs too."""
        queue = self.router.queue()
        if not self.marker.mark(queue):
            return []
        step = self.settings.batch_size
        for i, job_id in enumerate(one_per_batch(job_ids, step)):
            try:
                self.client.send_task(INFER_TASK, args=[job_id], queue=queue)
            except Exception as exc:  # any broker failure: the jobs stay queued in the DB
                # Nothing is on its way: let the next job's sender try again at once.
                self.marker.clear(queue)
                failed = list(job_ids[i * step :])
                log.warning(
                    "could not enqueue %d job(s) from %s on (%s: %s); they stay queued and "
                    "the sweep re-sends them",
                    len(failed),
                    job_id,
                    type(exc).__name__,
                    exc,
                )
                ENQUEUE_FAILURES.inc(len(failed))
                return failed
        return []

    def send_retrain(self, trigger_id: int) -> bool:
        """Send `eldefect.retrain(trigger_id)` to the training queue; False when the broker
        is down (the trigger stays queued and the beat's retrain check re-sends it)."""
        try:
            self.client.send_task(RETRAIN_TASK, args=[trigger_id], queue=Queue.TRAINING.value)
        except Exception as exc:  # any broker failure: the trigger row is the truth
            log.warning("could not send retrain trigger %d (%s); beat re-sends it", trigger_id, exc)
            return False
        return True

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
