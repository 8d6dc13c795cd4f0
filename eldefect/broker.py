"""Broker names and settings shared by everything that talks to the broker.

Plain values, no Celery import: the gateway builds a light client from them, the workers
spread them into their Celery config. Queue and task names live here and nowhere else, so the
gateway sends by name without importing the workers' code (DESIGN.md: imports point one way).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from eldefect.settings import Settings

INFER_TASK = "eldefect.infer"
# Retraining (workers/retrain_tasks.py): the beat decision and the training run itself.
RETRAIN_CHECK_TASK = "eldefect.retrain_check"
RETRAIN_TASK = "eldefect.retrain"
PRUNE_TASK = "eldefect.prune_images"
DRIFT_TASK = "eldefect.drift"


class Queue(enum.StrEnum):
    """Every queue the system uses; workers pick theirs with `eldefect worker --queue`."""

    INFERENCE_CPU = "inference.cpu"
    INFERENCE_GPU = "inference.gpu"
    TRAINING = "training"
    # Periodic housekeeping sent by beat; every CPU worker consumes it as well.
    MAINTENANCE = "maintenance"


# Inference queues in order of preference: a GPU worker serves a batch faster.
INFERENCE_QUEUES = (Queue.INFERENCE_GPU, Queue.INFERENCE_CPU)


def route_inference(serving: Mapping[str, int], consumers: Mapping[str, int], fallback: str) -> str:
    """The queue an inference task goes to: where a live worker serves the model (GPU first),
    else where any live worker listens (it may be loading one), else `fallback`.

    `serving` and `consumers` count live workers per queue (the workers table, db/workers.py).
    """
    for counts in (serving, consumers):
        for queue in INFERENCE_QUEUES:
            if counts.get(queue, 0) > 0:
                return queue.value
    return fallback


def embedded_broker_folders(settings: Settings) -> tuple[Path, Path]:
    """(queue folder, processed folder) of the embedded filesystem transport under var/."""
    root = settings.var_dir / "broker"
    return root / "queue", root / "processed"


def embedded_broker_control_folder(settings: Settings) -> Path:
    """Where kombu keeps exchange tables (bindings); it defaults to ./control otherwise."""
    return settings.var_dir / "broker" / "control"


def broker_options(settings: Settings) -> dict[str, Any]:
    """Celery configuration keys for `settings.broker_url` (spread into a Celery config).

    For the embedded broker (kombu's filesystem transport) this also creates its folders,
    because the transport fails on a missing one; every process calls it before connecting.
    """
    options: dict[str, Any] = {"broker_url": settings.broker_url}
    if settings.uses_embedded_broker:
        queue, processed = embedded_broker_folders(settings)
        control = embedded_broker_control_folder(settings)
        for folder in (queue, processed, control):
            folder.mkdir(parents=True, exist_ok=True)
        options["broker_transport_options"] = {
            # One folder for both directions: every process reads and writes the same queue.
            "data_folder_in": str(queue),
            "data_folder_out": str(queue),
            "processed_folder": str(processed),
            "store_processed": False,
            "polling_interval": settings.broker_poll_interval_s,
            # kombu keeps exchange tables (the fanout bindings of remote-control broadcasts)
            # here; it defaults to ./control, relative to whatever the current directory is.
            "control_folder": str(control),
        }
        # kombu's transport with atomic writes and a reader that survives torn messages.
        options["broker_transport"] = "eldefect.fs_transport:Transport"
    return options
