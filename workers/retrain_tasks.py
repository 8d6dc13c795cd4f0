"""Thin Celery tasks of the retraining loop, over workers/retrain_policy.py and retrain.py."""

from __future__ import annotations

import socket
from typing import Any

from eldefect.broker import RETRAIN_CHECK_TASK, RETRAIN_TASK, Queue
from eldefect.settings import get_settings
from workers.app import app
from workers.retrain import run_retrain
from workers.retrain_policy import check_retrain, registry_production


def send_retrain(trigger_id: int) -> object:
    return app.send_task(RETRAIN_TASK, args=[trigger_id], queue=Queue.TRAINING.value)


@app.task(
    name=RETRAIN_CHECK_TASK,
    # Re-run by beat every retrain_check_interval_s and decided by the database: a lost
    # message is harmless (the next tick decides again), so ack early and never retry.
    acks_late=False,
    ignore_result=True,
)
def retrain_check() -> dict[str, Any]:
    """Fail dead trainings, re-send lost ones, open a trigger when one is due."""
    settings = get_settings()
    report = check_retrain(
        settings=settings, send=send_retrain, production=registry_production(settings)
    )
    return {
        "expired": report.expired,
        "resent": report.resent,
        "opened": report.opened,
        "reason": report.reason,
    }


@app.task(
    name=RETRAIN_TASK,
    # Ack at once: a training runs for minutes, longer than a broker's redelivery timeout.
    # If this worker dies the trigger's lease runs out and the beat's check marks it failed;
    # a redelivered duplicate would find the trigger taken and stop.
    acks_late=False,
    ignore_result=True,
)
def retrain(trigger_id: int) -> dict[str, Any]:
    """Train, register and gate a challenger for one trigger."""
    outcome = run_retrain(
        trigger_id=trigger_id,
        settings=get_settings(),
        worker=f"{retrain.request.hostname or socket.gethostname()}",
    )
    return {"decision": outcome.decision if outcome else None}
