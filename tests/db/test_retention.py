"""Retention (db/retention.py): image bytes of long-ended jobs go, everything else stays."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db import jobs as crud
from db import lifecycle
from db.models import InputStats, Job, JobImage, JobStatus, Result
from db.retention import count_prunable, prune_images, retention_cutoff
from db.reviews import create_review
from db.session import session_scope

STATS = {"mean": 0.5, "std": 0.1, "p10": 0.3, "p50": 0.5, "p90": 0.7}


@dataclass(frozen=True)
class Meta:
    format: str = "PNG"
    width: int = 8
    height: int = 4


def _submit(session: Session, station_id: str, data: bytes) -> str:
    upload = crud.NewImage(data=data, meta=Meta())
    job, _ = crud.submit_job(session=session, station_id=station_id, upload=upload)
    return job.id


def _end(session: Session, job_id: str, *, ok: bool, days_ago: float) -> None:
    """Claim the job and end it `days_ago` days back (succeeded with a result, or failed)."""
    when = lifecycle.utcnow() - timedelta(days=days_ago)
    claimed = lifecycle.claim_jobs(session=session, limit=1, lease_s=60, prefer=job_id, now=when)
    assert [job.id for job in claimed] == [job_id]
    if ok:
        outcome = lifecycle.JobOutcome(
            job_id=job_id,
            probabilities={"crack": 0.9},
            defects=["crack"],
            thresholds={"crack": 0.5},
            stats=STATS,
            queue_wait_ms=1.0,
            inference_ms=1.0,
        )
        written = lifecycle.record_results(
            session=session, outcomes=[outcome], model_name="m", model_version="1", now=when
        )
        assert written == [job_id]
    else:
        lifecycle.fail_jobs(session=session, errors={job_id: ("corrupt_image", "bad")}, now=when)
    session.commit()


def _images(url: str) -> set[str]:
    with session_scope(url) as session:
        return set(session.scalars(select(JobImage.job_id)))


def test_prune_deletes_only_images_of_jobs_ended_before_the_cutoff(db_url: str) -> None:
    with session_scope(db_url) as session:
        station = crud.get_or_create_station(session=session, name="line-1").id
        ids = {
            name: _submit(session, station, name.encode() * 100)
            for name in (
                "old_ok",
                "old_failed",
                "recent_ok",
                "old_queued",
                "old_running",
                "old_reviewed",
            )
        }
        _end(session, ids["old_ok"], ok=True, days_ago=40)
        # Reviewed images are training data: kept however old.
        _end(session, ids["old_reviewed"], ok=True, days_ago=60)
        reviewed = session.get(Job, ids["old_reviewed"])
        assert reviewed is not None
        create_review(
            session=session, job=reviewed, defects=["crack"], comment=None, reviewer_id=None
        )
        _end(session, ids["old_failed"], ok=False, days_ago=31)
        _end(session, ids["recent_ok"], ok=True, days_ago=2)
        # Still open, however old: a job's bytes are what its worker needs.
        old = lifecycle.utcnow() - timedelta(days=90)
        session.execute(
            update(Job)
            .where(Job.id.in_([ids["old_queued"], ids["old_running"]]))
            .values(created_at=old, enqueued_at=old)
        )
        lifecycle.claim_jobs(
            session=session, limit=1, lease_s=60, prefer=ids["old_running"], now=old
        )
    before = retention_cutoff(30)
    assert before is not None

    with session_scope(db_url) as session:
        planned = count_prunable(session=session, before=before)
    assert planned.images == 2
    assert planned.bytes == len(b"old_ok" * 100) + len(b"old_failed" * 100)
    assert _images(db_url) == set(ids.values())  # a dry run deletes nothing

    done = prune_images(db_url, before=before, chunk=1)  # one row per transaction: loops

    assert (done.images, done.bytes) == (planned.images, planned.bytes)
    assert _images(db_url) == set(ids.values()) - {ids["old_ok"], ids["old_failed"]}
    with session_scope(db_url) as session:
        statuses = {row.id: row.status for row in session.execute(select(Job.id, Job.status))}
        assert statuses[ids["old_ok"]] == JobStatus.succeeded
        assert statuses[ids["old_failed"]] == JobStatus.failed
        assert session.get(Result, ids["old_ok"]) is not None
        assert session.get(InputStats, ids["old_ok"]) is not None
        assert session.scalar(select(func.count()).select_from(Result)) == 3
    assert prune_images(db_url, before=before).images == 0  # nothing left to do


def test_zero_days_keeps_every_image() -> None:
    assert retention_cutoff(0) is None
    now = lifecycle.utcnow()
    assert retention_cutoff(7, now) == now - timedelta(days=7)
