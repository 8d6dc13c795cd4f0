"""Promotion hook (entry point group `eldefect.promotion_hooks`): tell workers at once.

`eldefect promote` calls `on_promotion(name, alias, version)` after it moves an alias. A
broadcast remote-control command reaches every running worker, which then checks the alias
without waiting for its periodic check. Fire and forget: a worker that misses it still
notices within `model_check_interval_s`.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def on_promotion(name: str, alias: str, version: str) -> None:
    from workers.app import create_app
    from workers.control import REFRESH_COMMAND

    celery_app = create_app()
    try:
        celery_app.control.broadcast(
            REFRESH_COMMAND,
            arguments={"name": name, "alias": alias, "version": str(version)},
            reply=False,
        )
        log.info("told workers that %s@%s is now version %s", name, alias, version)
    finally:
        celery_app.close()
