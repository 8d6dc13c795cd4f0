"""Thin Celery tasks: each takes ids (or nothing) and calls a plain function in inference.py."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery.signals import worker_ready
from sqlalchemy.exc import OperationalError

from db.retention import prune_images as prune_images_before
from db.retention import retention_cutoff
from eldefect.broker import DRIFT_TASK, INFER_TASK, PRUNE_TASK, SWEEP_TASK
from eldefect.settings import get_settings
from monitoring.reports import run_drift_check
from workers import control as _control  # noqa: F401  (registers the remote-control command)
from workers.app import app
from workers.claims import HeldClaims, release_claims
from workers.inference import process_batch, run_sweep, wake_up
from workers.model_cache import ModelUnavailableError, get_model_cache

log = logging.getLogger(__name__)


@app.task(
    name=INFER_TASK,
    # The job's state is in the database; the message only says "work is waiting". Ack late,
    # so a message whose worker dies is redelivered where the transport can.
    acks_late=True,
    reject_on_worker_lost=True,
    # Only errors that pass with time: the database briefly unreachable (failover, restart,
    # "database is locked" past busy_timeout) and no model under the alias yet. A bad image is
    # never retried: its job ends `failed` inside process_batch.
    autoretry_for=(OperationalError, ModelUnavailableError),
    retry_backoff=1,
    retry_backoff_max=30,
    retry_jitter=True,
    # ~5 minutes of retries; past that the sweep re-sends the job anyway.
    max_retries=12,
    ignore_result=True,
)
def infer(job_id: str) -> dict[str, Any]:
    """Run one batch of queued jobs, this message's job first (a no-op if it is done)."""
    report = process_batch(
        settings=get_settings(),
        model_source=get_model_cache().get,
        prefer=job_id,
        on_unreleased=HELD_CLAIMS.hold,
    )
    return report.as_dict()


def send_infer(job_id: str) -> object:
    settings = get_settings()
    return app.send_task(INFER_TASK, args=[job_id], queue=settings.inference_queue)


# Jobs a batch claimed just as the database went away: handed back, and woken up, as soon as
# it answers again, instead of at the end of their lease (workers/claims.py).
HELD_CLAIMS = HeldClaims(
    release=lambda jobs: release_claims(get_settings().database_url, jobs),
    wake=lambda ids: wake_up(ids, send=send_infer, batch_size=get_settings().batch_size),
)


@app.task(
    name=SWEEP_TASK,
    # Idempotent and re-run every few seconds by beat: a lost sweep message is harmless, so
    # ack early and never retry (the next tick is the retry).
    acks_late=False,
    ignore_result=True,
)
def sweep() -> dict[str, int]:
    """Re-send jobs the broker lost; requeue (or fail) jobs whose worker died."""
    report = run_sweep(settings=get_settings(), send=send_infer)
    return {
        "requeued_stale": len(report.requeued_stale),
        "requeued_expired": len(report.requeued_expired),
        "failed": len(report.failed),
    }


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
def _preload_model(**_: Any) -> None:
    """Load the served model as the worker starts, so the first batch does not wait for it."""

    def load() -> None:
        try:
            get_model_cache().get()
        except ModelUnavailableError as exc:
            log.warning("%s; jobs wait in the queue until one is promoted", exc)
        except Exception:  # logged; the first batch tries again and reports through retries
            log.exception("could not load the served model at start")

    threading.Thread(target=load, name="eldefect-model-preload", daemon=True).start()


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
