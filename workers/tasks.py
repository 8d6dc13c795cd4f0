"""Thin Celery tasks over plain functions in inference.py, and the worker's start and stop.

A worker starts its housekeeping thread (heartbeat and sweep, workers/housekeeping.py) and
loads its model in the background as soon as it is ready.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Task
from celery.signals import worker_ready, worker_shutdown

from db.retention import prune_images as prune_images_before
from db.retention import retention_cutoff
from db.session import DATABASE_OUTAGES
from eldefect.broker import DRIFT_TASK, INFER_TASK, INFERENCE_QUEUES, PRUNE_TASK, Queue
from eldefect.settings import get_settings, redact_url
from eldefect.wakeups import wake_marker
from monitoring.reports import run_drift_check
from workers import control as _control  # noqa: F401  (registers the remote-control command)
from workers.app import app
from workers.claims import HeldClaims, release_claims
from workers.housekeeping import Housekeeper
from workers.inference import drain, wake_up
from workers.model_cache import ModelUnavailableError, get_model_cache

log = logging.getLogger(__name__)


@app.task(
    name=INFER_TASK,
    bind=True,
    # The job's state is in the database; the message only says "work is waiting". Ack late,
    # so a message whose worker dies is redelivered where the transport can.
    acks_late=True,
    reject_on_worker_lost=True,
    # Only errors that pass with time: the database briefly unreachable (failover, restart,
    # "database is locked" past busy_timeout) and no model under the alias yet. A bad image is
    # never retried: its job ends `failed` inside process_batch.
    autoretry_for=(*DATABASE_OUTAGES, ModelUnavailableError),
    retry_backoff=1,
    retry_backoff_max=30,
    retry_jitter=True,
    # ~5 minutes of retries; past that the sweep re-sends the job anyway.
    max_retries=12,
    ignore_result=True,
)
def infer(self: Task, job_id: str) -> dict[str, Any]:
    """Drain the queued jobs, this message's job first (a no-op if they are done)."""
    settings = get_settings()
    # Before claiming: a job committed from now on sends a wake-up of its own.
    queue = (self.request.delivery_info or {}).get("routing_key")
    if queue:
        wake_marker(settings).clear(queue)
    reports = drain(
        settings=settings,
        model_source=get_model_cache().get,
        prefer=job_id,
        on_unreleased=HELD_CLAIMS.hold,
    )
    return {"batches": [report.as_dict() for report in reports]}


def send_infer(job_id: str, queue: str) -> object:
    return app.send_task(INFER_TASK, args=[job_id], queue=queue)


def _send_to_own_queue(job_id: str) -> object:
    """A wake-up for this worker's own queue: it serves the model and just held the job."""
    own = _housekeeper.queue if _housekeeper is not None else None
    return send_infer(job_id, own or get_settings().inference_queue.value)


# Jobs a batch claimed just as the database went away: handed back, and woken up, as soon as
# it answers again, instead of at the end of their lease (workers/claims.py).
HELD_CLAIMS = HeldClaims(
    release=lambda jobs: release_claims(get_settings().database_url, jobs),
    wake=lambda ids: wake_up(ids, send=_send_to_own_queue, batch_size=get_settings().batch_size),
)

_housekeeper: Housekeeper | None = None


def _consumed_queues(consumer: Any) -> list[str]:
    return [q.name for q in consumer.task_consumer.queues]


@app.task(
    name=PRUNE_TASK,
    # Idempotent like the sweep: a lost or failed run is redone at the next tick.
    acks_late=False,
    ignore_result=True,
)
def prune_images() -> dict[str, int]:
    """Delete the image bytes of jobs that ended more than image_retention_days ago."""
    settings = get_settings()
    before = retention_cutoff(settings.image_retention_days)
    if before is None:  # 0 days: keep every image
        return {"images": 0, "bytes": 0}
    report = prune_images_before(settings.database_url, before=before)
    if report.images:
        log.info(
            "retention: deleted %d images (%d bytes) of jobs ended before %s",
            report.images,
            report.bytes,
            before.isoformat(timespec="seconds"),
        )
    return {"images": report.images, "bytes": report.bytes}


@worker_ready.connect
def _start_worker(sender: Any, **_: Any) -> None:
    """Start housekeeping (heartbeat, sweep) and load the served model in the background."""
    global _housekeeper
    settings = get_settings()
    queues = _consumed_queues(sender)
    queue = next((q for q in queues if q != Queue.MAINTENANCE), Queue.MAINTENANCE.value)
    serves_model = queue in INFERENCE_QUEUES
    _housekeeper = Housekeeper(
        settings=settings,
        name=sender.hostname,
        queue=queue,
        model_state=get_model_cache().state if serves_model else None,
        send=send_infer,
        # Every worker sweeps, the training worker (--no-maintenance) too: with the inference
        # workers down, its sweep is what fails their queued jobs `model_unavailable`.
        sweep=True,
    )
    _housekeeper.start()
    log.info(
        "worker %s on %s (device %s), database %s, broker %s",
        sender.hostname,
        ",".join(queues),
        settings.inference_device,
        redact_url(settings.database_url),
        redact_url(settings.broker_url),
    )
    if serves_model:
        threading.Thread(target=_preload_model, name="eldefect-model-preload", daemon=True).start()


@worker_shutdown.connect
def _stop_worker(**_: Any) -> None:
    if _housekeeper is not None:
        _housekeeper.stop()


def _preload_model() -> None:
    """Load the served model as the worker starts, so the first batch does not wait for it."""
    try:
        get_model_cache().get()
    except ModelUnavailableError as exc:  # the cache retries with back-off; /readyz says why
        log.warning("%s; jobs wait in the queue until a model loads", exc)


@app.task(
    name=DRIFT_TASK,
    # Read-only over results plus one report row; beat sends the next check on its own tick,
    # so a lost or failed check is simply the next one (ack early, never retry).
    acks_late=False,
    ignore_result=True,
)
def drift() -> dict[str, Any]:
    """Measure drift of the production model's latest window and store the report."""
    report = run_drift_check(settings=get_settings())
    if report is None:
        return {"verdict": None}
    return {"report": report.id, "verdict": report.verdict.value, "n": report.n}
