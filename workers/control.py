"""The worker's remote-control command for promotion events (see workers/hooks.py)."""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.control import control_command

from eldefect.broker import INFERENCE_QUEUES
from eldefect.settings import get_settings
from workers.model_cache import get_model_cache

log = logging.getLogger(__name__)

REFRESH_COMMAND = "eldefect_refresh_model"


@control_command(
    args=[("name", str), ("alias", str), ("version", str)],
    signature="<name> <alias> <version>",
)
def eldefect_refresh_model(
    state: Any, name: str = "", alias: str = "", version: str = ""
) -> dict[str, str]:
    """Check the registry alias now; the new model loads in the background."""
    settings = get_settings()
    # A training worker serves nothing: a promotion must not make it load the model.
    if not any(q.name in INFERENCE_QUEUES for q in state.consumer.task_consumer.queues):
        return {"ok": "ignored: this worker serves no inference queue"}
    if (name, alias) != (settings.model_name, settings.model_alias):
        return {"ok": f"ignored: this worker serves {settings.model_name}@{settings.model_alias}"}
    log.info("promotion event: %s@%s -> version %s; refreshing", name, alias, version)
    get_model_cache().refresh()
    return {"ok": f"refreshing {name}@{alias}"}
