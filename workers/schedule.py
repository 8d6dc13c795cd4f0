"""The one beat schedule. Each entry runs on the maintenance queue and expires with its tick,
so a stopped worker does not come back to a pile of stale housekeeping messages.

The model-version check is not here: every worker must check its own loaded model, so that
runs in a thread inside each worker (workers/model_cache.py).
"""

from __future__ import annotations

from typing import Any

from eldefect.settings import Settings


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    return {
        # Re-send jobs left queued longer than requeue_after_s (the broker lost the message),
        # requeue jobs whose lease ran out (their worker died), fail those out of attempts.
        "sweep-lost-jobs": {
            "task": "eldefect.sweep",
            "schedule": settings.sweep_interval_s,
            "options": {"queue": "maintenance", "expires": settings.sweep_interval_s},
        },
        # Fail trainings whose worker died, and open a retrain trigger when drift, new
        # reviews or the schedule call for one (workers/retrain_policy.py).
        "retrain-check": {
            "task": "eldefect.retrain_check",
            "schedule": settings.retrain_check_interval_s,
            "options": {"queue": "maintenance", "expires": settings.retrain_check_interval_s},
        },
        # Delete the image bytes of jobs that ended more than image_retention_days ago (their
        # results and input statistics stay). Cheap when there is nothing to delete.
        "prune-old-images": {
            "task": "eldefect.prune_images",
            "schedule": settings.prune_interval_s,
            "options": {"queue": "maintenance", "expires": settings.prune_interval_s},
        },
        # Drift of the production version's latest served window against its reference
        # profile, stored as a report (monitoring/reports.py, docs/monitoring.md).
        "drift-check": {
            "task": "eldefect.drift",
            "schedule": settings.drift_interval_s,
            "options": {"queue": "maintenance", "expires": settings.drift_interval_s},
        },
    }
