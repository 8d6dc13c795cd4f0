"""Broker settings shared by everything that talks to the broker (gateway, workers, beat).

Plain dicts, no Celery import: the gateway builds a light client from them, the workers
spread them into their Celery config. The task name lives here too, so the gateway sends by
name without importing the workers' code (DESIGN.md: imports point one way).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eldefect.settings import Settings

INFER_TASK = "eldefect.infer"
SWEEP_TASK = "eldefect.sweep"
# Retraining (workers/retrain_tasks.py): the beat decision and the training run itself.
RETRAIN_CHECK_TASK = "eldefect.retrain_check"
RETRAIN_TASK = "eldefect.retrain"
TRAINING_QUEUE = "training"
PRUNE_TASK = "eldefect.prune_images"
DRIFT_TASK = "eldefect.drift"


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
