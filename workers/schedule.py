"""The one beat schedule. Each entry runs on the maintenance queue and expires with its tick,
so a stopped worker does not come back to a pile of stale housekeeping messages.

Two periodic jobs are not here, because each worker must do them itself whatever its queue
holds: the model-version check (a thread in workers/model_cache.py) and the sweep with the
heartbeat (a thread in workers/housekeeping.py). A beat-sent sweep waited behind the backlog
it was meant to rescue.
"""

from __future__ import annotations

from typing import Any

from eldefect.broker import DRIFT_TASK, PRUNE_TASK, RETRAIN_CHECK_TASK, Queue
from eldefect.settings import Settings


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    def every(task: str, interval_s: float) -> dict[str, Any]:
        return {
            "task": task,
            "schedule": interval_s,
            "options": {"queue": Queue.MAINTENANCE.value, "expires": interval_s},
        }

    return {
        # Fail trainings whose worker died, and open a retrain trigger when drift, new
        # reviews or the schedule call for one (workers/retrain_policy.py).
        "retrain-check": every(RETRAIN_CHECK_TASK, settings.retrain_check_interval_s),
        # Delete the image bytes of jobs that ended more than image_retention_days ago (their
        # results and input statistics stay). Cheap when there is nothing to delete.
        "prune-old-images": every(PRUNE_TASK, settings.prune_interval_s),
        # Drift of the production version's latest served window against its reference
        # profile, stored as a report (monitoring/reports.py, docs/monitoring.md).
        "drift-check": every(DRIFT_TASK, settings.drift_interval_s),
    }
