"""Prometheus metrics of a worker process: `eldefect_worker_<name>_<unit>`.

A worker is one process (Celery's thread pool shares the loaded model), so its metrics live in
that process's default registry and `eldefect worker` serves them on a port of its own
(`worker_metrics_port`): one port per worker, no shared multiprocess files (which collide on
pid between containers). Labels are bounded and initialised up front, so every series exists
from the first scrape; nothing is labelled per job or per image.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

# From a fast decode (milliseconds) to a job that waited minutes in a backlog.
SECONDS_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

SUCCEEDED, FAILED = "succeeded", "failed"
NO_ERROR = "none"
OTHER_ERROR = "other"
# Every code a job can end `failed` with on a worker: the decoder's (eldefect.imaging), the
# model's and the batch's (workers/inference.py), the sweep's (db/lifecycle.WORKER_LOST,
# db/lifecycle.MODEL_UNAVAILABLE).
# A code outside this list is counted as `other`, so the label stays bounded.
FAILURE_CODES = (
    "empty_file",
    "unsupported_media_type",
    "invalid_image",
    "too_many_pixels",
    "corrupt_image",
    "inference_error",
    "internal_error",
    "worker_lost",
    "model_unavailable",
    OTHER_ERROR,
)

JOBS_FINISHED = Counter(
    "eldefect_worker_jobs_total",
    "Jobs this worker ended, by outcome and error code (`none` when succeeded).",
    ["outcome", "code"],
)
QUEUE_WAIT = Histogram(
    "eldefect_worker_queue_wait_seconds",
    "Time from a job's creation (enqueued) to its claim by a worker.",
    buckets=SECONDS_BUCKETS,
)
INFERENCE_DURATION = Histogram(
    "eldefect_worker_inference_duration_seconds",
    "Time of one forward pass over a batch.",
    buckets=SECONDS_BUCKETS,
)
DECODE_DURATION = Histogram(
    "eldefect_worker_decode_duration_seconds",
    "Time to decode one image and compute its input statistics.",
    buckets=SECONDS_BUCKETS,
)
BATCH_SIZE = Histogram(
    "eldefect_worker_batch_size",
    "Jobs claimed by one batch.",
    buckets=BATCH_BUCKETS,
)
PREDICTIONS = Counter(
    "eldefect_worker_predictions_total",
    "Images scored by the model whose result was stored.",
)
POSITIVE_PREDICTIONS = Counter(
    "eldefect_worker_predictions_positive_total",
    "Scored images predicted positive for a class (probability at or above its threshold).",
    ["label"],
)
MODEL_INFO = Gauge(
    "eldefect_worker_model_info",
    "1 for the registered model name and version this worker serves.",
    ["name", "version"],
)
MODEL_LOADED = Gauge(
    "eldefect_worker_model_loaded",
    "1 once this worker has a model in service, 0 before (no version under the alias yet).",
)
MODEL_LOADS = Counter(
    "eldefect_worker_model_loads_total",
    "Model versions loaded into this worker: the first one and every swap.",
)
MODEL_LOAD_FAILURES = Counter(
    "eldefect_worker_model_load_failures_total",
    "Model loads that raised (the version in service, if any, stays).",
)

JOBS_FINISHED.labels(outcome=SUCCEEDED, code=NO_ERROR)
for _code in FAILURE_CODES:
    JOBS_FINISHED.labels(outcome=FAILED, code=_code)


def record_claimed(queue_waits_s: Iterable[float]) -> None:
    """A batch claimed these jobs, each after waiting this long since it was enqueued."""
    waits = list(queue_waits_s)
    BATCH_SIZE.observe(len(waits))
    for wait in waits:
        QUEUE_WAIT.observe(max(0.0, wait))


def record_finished(*, succeeded: int, failed_codes: Iterable[str]) -> None:
    """Jobs ended: `succeeded` of them with a result, one error code per failed one."""
    JOBS_FINISHED.labels(outcome=SUCCEEDED, code=NO_ERROR).inc(succeeded)
    for code in failed_codes:
        bounded = code if code in FAILURE_CODES else OTHER_ERROR
        JOBS_FINISHED.labels(outcome=FAILED, code=bounded).inc()


def record_prediction(*, labels: Iterable[str], positives: Iterable[str]) -> None:
    """One stored result: every class of the model, and those it predicted positive."""
    PREDICTIONS.inc()
    for label in labels:  # a class never predicted positive still shows as 0
        POSITIVE_PREDICTIONS.labels(label=label)
    for label in positives:
        POSITIVE_PREDICTIONS.labels(label=label).inc()


def record_model_in_service(*, name: str, version: str) -> None:
    """A model went into service: the one name and version shown for this worker."""
    MODEL_INFO.clear()
    MODEL_INFO.labels(name=name, version=str(version)).set(1)
    MODEL_LOADED.set(1)


def record_model_load(*, ok: bool) -> None:
    (MODEL_LOADS if ok else MODEL_LOAD_FAILURES).inc()
