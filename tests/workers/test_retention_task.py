"""The beat task that applies image retention (workers/tasks.py: prune_images)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from db.models import JobImage, JobStatus
from db.session import session_scope
from eldefect.settings import get_settings
from tests.workers.factories import make_job, make_station
from workers.app import celery_config


def test_the_beat_schedule_runs_the_prune_on_the_maintenance_queue() -> None:
    entry = celery_config(get_settings())["beat_schedule"]["prune-old-images"]
    assert entry["task"] == "eldefect.prune_images"
    assert entry["options"]["queue"] == "maintenance"


@pytest.mark.parametrize("days", [30, 0])
def test_prune_task_applies_image_retention_days(
    db_url: str, days: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from db.lifecycle import utcnow
    from workers.tasks import prune_images

    monkeypatch.setenv("ELDEFECT_DATABASE_URL", db_url)
    monkeypatch.setenv("ELDEFECT_IMAGE_RETENTION_DAYS", str(days))
    get_settings.cache_clear()
    with session_scope(db_url) as session:
        station = make_station(session)
        old = make_job(session, station=station, status=JobStatus.failed)
        old.finished_at = utcnow() - timedelta(days=31)
        fresh = make_job(session, station=station, status=JobStatus.failed)
        fresh.finished_at = utcnow() - timedelta(days=29)
        ids = {old.id, fresh.id}
    try:
        report = prune_images()
    finally:
        get_settings.cache_clear()

    with session_scope(db_url) as session:
        left = set(session.scalars(select(JobImage.job_id)))
    if days:
        assert report["images"] == 1 and left == ids - {old.id}
    else:
        assert report["images"] == 0 and left == ids
