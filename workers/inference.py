"""Plain functions behind the tasks: one batch of inference, one sweep. Tests call these.

A wake-up message drains: batches until one comes back short (`drain`). A batch: claim up to
`batch_size` queued jobs (the message's own job first), wait up to
`batch_wait_ms` (default 0) for more while the batch is not full, decode each image (an
image that will not decode fails its job at once, with the reason) no larger than the
model's input, compute its input statistics, run ONE forward pass over the rest, and store
every result and statistic in one transaction.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from db import lifecycle
from db.session import (
    DATABASE_OUTAGES,
    get_autocommit_sessionmaker,
    is_database_outage,
    session_scope,
)
from db.task_runs import record_task_run
from db.workers import QueueCounts, WorkerSeen, live_workers
from eldefect.broker import INFERENCE_QUEUES, route_inference
from eldefect.imaging import ImageDecodeError, decode_gray
from eldefect.settings import Settings
from eldefect.stats import input_statistics
from eldefect.wakeups import one_per_batch
from monitoring import metrics
from workers.claims import release_claims
from workers.model_cache import ServingModel

log = logging.getLogger(__name__)

INFERENCE_ERROR = "inference_error"
INTERNAL_ERROR = "internal_error"
SWEEP_TASK_RUN = "sweep"  # its row in task_runs: when the sweep last ran (the exporter reads it)
_POLL_S = 0.01  # how often a batch that is not full looks for more jobs within batch_wait_ms
# A decoded image with more pixels than this many model inputs is resized to the model's input
# as soon as its statistics are taken, rather than held at full size until the forward pass.
_SHRINK_PAST_INPUTS = 4


class BatchClock:
    """When the batches running in this process started (one per thread that runs one).

    The heartbeat reads it: a batch that outlives its lease (a hung forward pass, a stalled
    GPU) means the worker only looks alive, so it stops reporting a model (workers/
    housekeeping.py) and routing and the sweep stop counting on it.
    """

    def __init__(self) -> None:
        self._started: dict[int, float] = {}

    def start(self) -> None:
        """This thread's batch holds claimed jobs from now (their lease runs from the claim)."""
        self._started[threading.get_ident()] = time.monotonic()

    def stop(self) -> None:
        self._started.pop(threading.get_ident(), None)

    def longest_s(self) -> float:
        """Seconds the oldest running batch has run; 0 when none runs."""
        started = list(self._started.values())  # a copy: batch threads add and remove
        return time.monotonic() - min(started) if started else 0.0


BATCHES = BatchClock()


@dataclass
class BatchReport:
    claimed: list[str] = field(default_factory=list)
    succeeded: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    model_version: str | None = None
    forward_ms: float = 0.0
    # A job tried before is claimed alone (db.lifecycle.claim_jobs): such a batch is short
    # whatever else is queued.
    retried_alone: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "claimed": len(self.claimed),
            "succeeded": len(self.succeeded),
            "failed": len(self.failed),
            "model_version": self.model_version,
            "forward_ms": round(self.forward_ms, 2),
        }


def claim_batch(*, settings: Settings, prefer: str | None) -> list[lifecycle.ClaimedJob]:
    """Claim a batch: what is queued now, then more for up to batch_wait_ms if not full."""
    url, size = settings.database_url, settings.batch_size
    claim = partial(lifecycle.claim_jobs, lease_s=settings.running_timeout_s)
    # A claim is one or two statements (db/lifecycle.py): in an autocommit session each is one
    # round trip, and the claimed rows are committed as it returns.
    claiming = get_autocommit_sessionmaker(url)
    with claiming() as session:
        jobs = claim(session=session, limit=size, prefer=prefer)
    if not jobs or jobs[0].tried_before:  # nothing queued, or a job that runs alone
        return jobs
    deadline = time.monotonic() + settings.batch_wait_ms / 1000.0
    while len(jobs) < size and (remaining := deadline - time.monotonic()) > 0:
        time.sleep(min(_POLL_S, remaining))
        try:
            with claiming() as session:
                jobs += claim(session=session, limit=size - len(jobs), fresh_only=True)
        except DATABASE_OUTAGES:  # the database went away: go on with (and answer for) these
            log.warning("database lost while filling a batch; going on with %d jobs", len(jobs))
            break
    return jobs


def _decode(
    jobs: Sequence[lifecycle.ClaimedJob], *, max_pixels: int, min_side: int
) -> tuple[
    list[tuple[lifecycle.ClaimedJob, np.ndarray, dict[str, float]]], dict[str, tuple[str, str]]
]:
    ready, errors = [], {}
    for job in jobs:
        started = time.perf_counter()
        try:
            gray = decode_gray(job.image, max_pixels=max_pixels, min_side=min_side)
            stats = input_statistics(gray)
            if gray.size > _SHRINK_PAST_INPUTS * min_side**2:
                gray = _held_at_input_size(gray, min_side)
        except ImageDecodeError as exc:
            errors[job.id] = (exc.code, exc.message)
            continue
        except (ValueError, OSError, MemoryError, AssertionError) as exc:
            errors[job.id] = ("corrupt_image", f"the image data cannot be decoded: {exc}")
            continue
        finally:
            metrics.DECODE_DURATION.observe(time.perf_counter() - started)
        ready.append((job, gray, stats))
    return ready, errors


def _held_at_input_size(gray: np.ndarray, size: int) -> np.ndarray:
    """The image resized to the model's input, or as it is if that fails (the forward pass
    then isolates it).

    A batch of module-sized images held at full size until the forward pass would need
    gigabytes (40 megapixels is 160 MB as float32). Preprocessing resizes to exactly this size
    first anyway, so the model's input is unchanged.
    """
    from eldefect.preprocess import resize  # torch: only worker processes that serve get here

    try:
        return resize(gray, size)[0].numpy()
    except (RuntimeError, MemoryError):  # torch's out-of-memory is a RuntimeError
        log.warning("could not shrink a %s image early; keeping it at full size", gray.shape)
        return gray


_NOT_FINITE = "the model's output for this image is not a number (NaN or infinite)"


def _forward(
    model: ServingModel, images: list[np.ndarray]
) -> tuple[list[np.ndarray | None], dict[int, str]]:
    """One forward pass; if it raises, image by image so one bad image fails only itself."""
    try:
        probs = np.asarray(model.predict(images))
        assert probs.shape[0] == len(images), f"{probs.shape[0]} rows for {len(images)} images"
        return list(probs), {}
    except Exception as exc:  # isolate the culprit below instead of failing the whole batch
        if len(images) == 1:
            log.exception("forward pass failed on a single image")
            return [None], {0: f"the model could not process this image: {exc}"}
        log.exception("forward pass over %d images failed; retrying one by one", len(images))
    rows: list[np.ndarray | None] = []
    failures: dict[int, Exception] = {}
    for i, image in enumerate(images):
        try:
            rows.append(np.asarray(model.predict([image]))[0])
        except Exception as exc:  # this image alone breaks the model: fail its job
            rows.append(None)
            failures[i] = exc
    if len(failures) == len(images):  # no image got through: the model or its device failed
        log.error(
            "the model failed on each of %d images alone: a model or device fault", len(images)
        )
        first = failures[0]
        reason = (
            f"the model failed on every image of this batch, alone too, so the fault is likely "
            f"the model's or its device's, not this image's: {type(first).__name__}: {first}"
        )
        return rows, dict.fromkeys(failures, reason)
    return rows, {
        i: f"the model could not process this image: {exc}" for i, exc in failures.items()
    }


def process_batch(
    *,
    settings: Settings,
    model_source: Callable[[], ServingModel],
    prefer: str | None = None,
    on_unreleased: Callable[[Sequence[lifecycle.ClaimedJob]], None] | None = None,
) -> BatchReport:
    """Run one batch; a no-op when no job is queued (e.g. a redelivered message).

    `on_unreleased` takes the claimed jobs when the database fails and cannot even take them
    back (workers/claims.py holds them until it can); without it they wait for their lease.
    """
    model = model_source()  # before claiming: without a model, jobs stay queued for others
    report = BatchReport(model_version=str(model.version))
    jobs: list[lifecycle.ClaimedJob] = []
    try:
        jobs = claim_batch(settings=settings, prefer=prefer)
        report.claimed = [job.id for job in jobs]
        if not jobs:
            return report
        BATCHES.start()
        report.retried_alone = jobs[0].tried_before
        metrics.record_claimed((job.started_at - job.created_at).total_seconds() for job in jobs)
        ready, errors = _decode(
            jobs, max_pixels=settings.max_image_pixels, min_side=model.input_size
        )
        outcomes: list[lifecycle.JobOutcome] = []
        if ready:
            started = time.perf_counter()
            rows, model_errors = _forward(model, [gray for _, gray, _ in ready])
            report.forward_ms = (time.perf_counter() - started) * 1000.0
            metrics.INFERENCE_DURATION.observe(report.forward_ms / 1000.0)
            for i, ((job, _, stats), row) in enumerate(zip(ready, rows, strict=True)):
                if row is None:
                    errors[job.id] = (INFERENCE_ERROR, model_errors[i])
                    continue
                # Stored, a NaN would read as "no defect" on SQLite and break the whole
                # batch's insert on PostgreSQL: it fails its own image instead.
                if not np.isfinite(row).all():
                    errors[job.id] = (INFERENCE_ERROR, _NOT_FINITE)
                    continue
                shaped = model.result(row)
                outcomes.append(
                    lifecycle.JobOutcome(
                        job_id=job.id,
                        probabilities=shaped.probabilities,
                        defects=shaped.defects,
                        thresholds=shaped.thresholds,
                        stats=stats,
                        queue_wait_ms=(job.started_at - job.created_at).total_seconds() * 1000,
                        inference_ms=report.forward_ms,
                    )
                )
        with session_scope(settings.database_url) as session:
            report.succeeded = lifecycle.record_results(
                session=session,
                outcomes=outcomes,
                model_name=model.name,
                model_version=str(model.version),
            )
            report.failed = lifecycle.fail_jobs(session=session, errors=errors)
        _record_finished(report, outcomes, errors)
    except Exception as exc:
        if is_database_outage(exc):  # transient (the task retries): another try for these jobs
            _release(settings, jobs, on_unreleased)
        else:  # a retry would fail the same way: end these jobs, do not loop
            _fail_internal(settings, report.claimed, exc)
        raise
    except BaseException:  # the worker is stopping: hand the jobs back now
        _release(settings, jobs, None)
        raise
    finally:
        BATCHES.stop()
    log.info(
        "batch of %d: %d succeeded, %d failed, forward pass %.1f ms, %s version %s",
        len(jobs),
        len(report.succeeded),
        len(report.failed),
        report.forward_ms,
        model.name,
        model.version,
    )
    return report


def _record_finished(
    report: BatchReport,
    outcomes: list[lifecycle.JobOutcome],
    errors: dict[str, tuple[str, str]],
) -> None:
    """Count what this batch ended (not what another worker ended first)."""
    written = set(report.succeeded)
    for outcome in outcomes:
        if outcome.job_id in written:
            metrics.record_prediction(labels=outcome.thresholds, positives=outcome.defects)
    metrics.record_finished(
        succeeded=len(report.succeeded), failed_codes=(errors[i][0] for i in report.failed)
    )


def _fail_internal(settings: Settings, job_ids: list[str], exc: Exception) -> None:
    log.exception("batch of %d failed; failing its jobs", len(job_ids))
    message = f"the worker could not finish this job ({type(exc).__name__})"
    try:
        with session_scope(settings.database_url) as session:
            failed = lifecycle.fail_jobs(
                session=session, errors=dict.fromkeys(job_ids, (INTERNAL_ERROR, message))
            )
        metrics.record_finished(succeeded=0, failed_codes=[INTERNAL_ERROR] * len(failed))
    except Exception:  # the lease runs out and the sweep retries, up to max_attempts
        log.warning("could not fail %d jobs; the sweep will retry them", len(job_ids))


def _release(
    settings: Settings,
    jobs: Sequence[lifecycle.ClaimedJob],
    on_unreleased: Callable[[Sequence[lifecycle.ClaimedJob]], None] | None,
) -> None:
    """Hand claimed jobs back now rather than when their lease runs out."""
    if not jobs:
        return
    try:
        release_claims(settings.database_url, jobs)
    except Exception:  # the database may be what failed
        if on_unreleased is None:
            log.warning("could not release %d claimed jobs; the sweep will", len(jobs))
        else:
            on_unreleased(jobs)


def drain(
    *,
    settings: Settings,
    model_source: Callable[[], ServingModel],
    prefer: str | None = None,
    on_unreleased: Callable[[Sequence[lifecycle.ClaimedJob]], None] | None = None,
) -> list[BatchReport]:
    """Batches until one comes back short of `batch_size`: what one wake-up owes.

    A batch of one job tried before is short by design, not because the queue ran dry, so
    the draining goes on after it.

    Called after the queue's wake-up marker is cleared (eldefect/wakeups.py): every job
    committed before then is claimed here or by a batch already running elsewhere, and a job
    committed after it has its own wake-up on the way.
    """
    batch = partial(
        process_batch, settings=settings, model_source=model_source, on_unreleased=on_unreleased
    )
    reports: list[BatchReport] = []
    while not reports or _more_may_be_queued(reports[-1], settings.batch_size):
        reports.append(batch(prefer=None if reports else prefer))
    return reports


def _more_may_be_queued(report: BatchReport, batch_size: int) -> bool:
    # A full batch, or a job tried before, claimed alone whatever else is queued.
    return len(report.claimed) >= batch_size or report.retried_alone


def wake_up(job_ids: Sequence[str], *, send: Callable[[str], object], batch_size: int) -> None:
    """One wake-up message per batch of these jobs (held claims handed back, the sweep)."""
    for job_id in one_per_batch(job_ids, batch_size):
        send(job_id)


def unserved_reason(workers: Sequence[WorkerSeen], model_name: str) -> str | None:
    """Why no job can be served now, or None while some worker serves (or is still loading).

    Jobs are failed for it only when every live inference worker has said why it has no
    model; a worker still loading its first one has said nothing yet.
    """
    inference = [w for w in workers if w.queue in INFERENCE_QUEUES]
    if any(w.model_name == model_name and w.model_version is not None for w in inference):
        return None
    if not inference:
        return "no inference worker is running"
    errors = [w.model_error for w in inference]
    if not all(errors):
        return None
    return f"no worker can load a model: {errors[0]}"


def run_sweep(*, settings: Settings, send: Callable[[str, str], object]) -> lifecycle.SweepReport:
    """Requeue lost jobs in the database, fail those no worker can serve, then wake workers.

    Wake-ups go to a queue with live workers (eldefect.broker.route_inference), so a job
    first sent to a queue whose workers died reaches another kind after requeue_after_s.
    """
    with session_scope(settings.database_url) as session:
        workers = live_workers(session=session, stale_after_s=settings.worker_stale_after_s)
        report = lifecycle.sweep(
            session=session,
            requeue_after_s=settings.requeue_after_s,
            max_attempts=settings.max_attempts,
        )
        reason = unserved_reason(workers, settings.model_name)
        if reason is not None:
            report.unserved = lifecycle.fail_unserved(
                session=session,
                older_than_s=settings.model_unavailable_fail_after_s,
                message=f"waited {settings.model_unavailable_fail_after_s:g} s; {reason}",
            )
        record_task_run(session=session, name=SWEEP_TASK_RUN)
    metrics.record_finished(
        succeeded=0,
        failed_codes=[lifecycle.WORKER_LOST] * len(report.failed)
        + [lifecycle.MODEL_UNAVAILABLE] * len(report.unserved),
    )
    counts = QueueCounts.of(workers, settings.model_name)
    queue = route_inference(counts.serving, counts.consumers, settings.inference_queue)
    wake_up(
        report.to_enqueue, send=lambda job_id: send(job_id, queue), batch_size=settings.batch_size
    )
    if report.to_enqueue or report.failed or report.unserved:
        log.warning(
            "sweep: re-sent %d queued too long (to %s), requeued %d whose worker died, "
            "failed %d out of attempts and %d no worker can serve",
            len(report.requeued_stale),
            queue,
            len(report.requeued_expired),
            len(report.failed),
            len(report.unserved),
        )
    return report
