"""The Celery app, built from the one settings object.

Messages are wake-ups, the database is the truth (docs/serving.md): a task carries a job id,
the worker claims queued jobs from the database in batches. So no result backend is needed,
and a lost or duplicated message costs latency, never a job.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Exchange
from kombu import Queue as KombuQueue

from eldefect.broker import (
    DRIFT_TASK,
    INFER_TASK,
    PRUNE_TASK,
    RETRAIN_CHECK_TASK,
    RETRAIN_TASK,
    Queue,
    broker_options,
)
from eldefect.settings import Settings, get_settings
from eldefect.wakeups import coalesces


def _kombu_queue(name: str) -> KombuQueue:
    # The same shape Celery gives a queue it creates on demand, so that the gateway's
    # `send_task(..., queue="inference.cpu")` and the worker's consumer meet in the middle.
    return KombuQueue(name, Exchange(name, type="direct"), routing_key=name)


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery configuration for these settings (a plain dict, so tests can inspect it)."""
    from workers.schedule import beat_schedule

    return {
        **broker_options(settings),
        "broker_connection_retry_on_startup": True,
        # Job state lives in the database; nobody reads task results.
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        # Ack after the work: a message whose worker dies is redelivered where the transport
        # can (Redis, after its visibility timeout); the sweep covers the rest.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # On Redis at most one wake-up is pending per queue (eldefect/wakeups.py): a worker
        # that reserved it while draining would keep it from an idle one, so take one at a
        # time. Elsewhere every request sends its own: one batch worth in hand lets the
        # messages of jobs another batch already took be acked as no-ops without a round trip
        # each.
        "worker_prefetch_multiplier": 1 if coalesces(settings) else settings.batch_size,
        "task_queues": [_kombu_queue(q.value) for q in Queue],
        "task_default_queue": Queue.INFERENCE_CPU.value,
        "task_routes": {
            # Senders name the queue of each inference task (eldefect.broker.route_inference).
            INFER_TASK: {"queue": settings.inference_queue.value},
            RETRAIN_CHECK_TASK: {"queue": Queue.MAINTENANCE.value},
            RETRAIN_TASK: {"queue": Queue.TRAINING.value},
            PRUNE_TASK: {"queue": Queue.MAINTENANCE.value},
            DRIFT_TASK: {"queue": Queue.MAINTENANCE.value},
        },
        "task_create_missing_queues": True,
        "beat_schedule": beat_schedule(settings),
        "beat_schedule_filename": str(settings.var_dir / "celerybeat-schedule"),
        "worker_send_task_events": False,
        "worker_hijack_root_logger": False,
        "timezone": "UTC",
    }


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    if settings.uses_embedded_broker:
        settings.ensure_var_dir()
    celery_app = Celery("eldefect", include=["workers.tasks", "workers.retrain_tasks"])
    celery_app.conf.update(celery_config(settings))
    return celery_app


app = create_app()
