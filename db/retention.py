"""Retention: delete the image bytes of jobs that ended long ago.

An uploaded image is the bulk of what the database holds (a cell image is tens to hundreds of
KiB; its job, result and input statistics together are well under one). Once a job has ended
its bytes serve nobody but an operator looking back, so after a retention period they go.
What stays: the job row (the API still answers for it), its result and its input statistics
(drift windows and reference profiles are built from those, never from the bytes), and the
images of reviewed jobs, which are training data.

Only `job_images` rows are deleted, in chunks of `chunk` rows per transaction, so that a first
prune of a large backlog neither holds one huge transaction nor locks the table for long.
db imports nothing of ours: the cut-off time comes in as an argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, delete, exists, func, select
from sqlalchemy.orm import Session

from db.lifecycle import utcnow
from db.models import Job, JobImage, JobStatus, Review
from db.session import session_scope

_ENDED = (JobStatus.succeeded, JobStatus.failed)


@dataclass(frozen=True)
class PruneReport:
    """How many images (and how many bytes of image data) went, or would go on a dry run."""

    images: int
    bytes: int
    before: datetime


def retention_cutoff(days: int, now: datetime | None = None) -> datetime | None:
    """Images of jobs that ended before this time may go; None when `days` is 0 (keep all)."""
    if days <= 0:
        return None
    return (now or utcnow()) - timedelta(days=days)


def _prunable(before: datetime) -> Select[Any]:
    """Ids of the images that may go: their job ended before `before`.

    Every reason to keep an image longer is one more condition here. Reviewed images are
    training data (the retraining loop reads them), so they stay.
    """
    return (
        select(JobImage.job_id)
        .join(Job, Job.id == JobImage.job_id)
        .where(
            Job.status.in_(_ENDED),
            Job.finished_at < before,
            ~exists().where(Review.job_id == JobImage.job_id),
        )
    )


def count_prunable(*, session: Session, before: datetime) -> PruneReport:
    """What a prune would delete now, without deleting it (`eldefect db prune --dry-run`)."""
    ids = _prunable(before).subquery()
    images, size = session.execute(
        select(func.count(), func.coalesce(func.sum(func.length(JobImage.data)), 0)).where(
            JobImage.job_id.in_(select(ids.c.job_id))
        )
    ).one()
    return PruneReport(images=int(images), bytes=int(size), before=before)


def prune_chunk(*, session: Session, before: datetime, chunk: int) -> PruneReport:
    """Delete up to `chunk` prunable images; the caller commits."""
    ids = list(session.scalars(_prunable(before).order_by(JobImage.job_id).limit(chunk)))
    if not ids:
        return PruneReport(images=0, bytes=0, before=before)
    size = session.scalar(
        select(func.coalesce(func.sum(func.length(JobImage.data)), 0)).where(
            JobImage.job_id.in_(ids)
        )
    )
    session.execute(
        delete(JobImage)
        .where(JobImage.job_id.in_(ids))
        .execution_options(synchronize_session=False)
    )
    session.flush()
    return PruneReport(images=len(ids), bytes=int(size or 0), before=before)


def prune_images(url: str, *, before: datetime, chunk: int = 500) -> PruneReport:
    """Delete every prunable image, one committed chunk at a time; returns the totals."""
    images = size = 0
    while True:
        with session_scope(url) as session:
            done = prune_chunk(session=session, before=before, chunk=chunk)
        images, size = images + done.images, size + done.bytes
        if done.images < chunk:
            return PruneReport(images=images, bytes=size, before=before)
