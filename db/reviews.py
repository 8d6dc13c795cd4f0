"""Operator reviews of served jobs: record one, list them, read them back as training data.

Keyword-only arguments; the caller owns the session and commits. The rules a review must
follow (the job succeeded, the labels belong to the model that made the result) are checked
here, where the rows are, and refused with `ReviewRefused(code, message)`; the gateway maps
the codes to HTTP statuses.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Job, JobImage, JobStatus, Result, Review, as_utc, utcnow


class ReviewRefused(Exception):
    """A review the rules do not allow; `code` is stable, the message says what is allowed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def create_review(
    *,
    session: Session,
    job: Job,
    defects: Sequence[str],
    comment: str | None,
    reviewer_id: str | None,
) -> Review:
    """Add a review of a succeeded job; labels must be the result model's labels.

    The label set is the one the result was made with (the keys of its probabilities), so a
    review always speaks the language of the model it corrects.
    """
    if job.status != JobStatus.succeeded or job.result is None:
        raise ReviewRefused(
            "job_not_succeeded",
            f"job {job.id} is {JobStatus(job.status).value}; only a succeeded job can be reviewed",
        )
    result: Result = job.result
    allowed = list(result.probabilities)
    unknown = sorted({d for d in defects if d not in allowed})
    if unknown:
        raise ReviewRefused(
            "unknown_labels",
            f"labels {unknown} are not in the label set of model {result.model_name} "
            f"v{result.model_version}: {allowed}",
        )
    review = Review(
        job_id=job.id,
        # The model's order, without repeats: the same answer always reads the same.
        defects=[label for label in allowed if label in set(defects)],
        comment=comment,
        reviewer_id=reviewer_id,
        model_name=result.model_name,
        model_version=str(result.model_version),
        created_at=utcnow(),
    )
    session.add(review)
    session.flush()
    return review


def list_reviews(
    *, session: Session, since: datetime | None = None, limit: int = 100
) -> list[Review]:
    """Every review, superseded ones too: the latest `limit`, newest first; or, given `since`,
    the first `limit` made after it, oldest first.

    With `since` the order turns so that a client can read everything by paging: the next
    `since` is the last review's time. Newest first there would hand back the latest `limit`
    and silently skip the older ones between `since` and them.
    """
    if since is None:
        query = select(Review).order_by(Review.created_at.desc(), Review.id.desc())
    else:
        query = (
            select(Review)
            .where(Review.created_at > as_utc(since))
            .order_by(Review.created_at, Review.id)
        )
    return list(session.scalars(query.limit(limit)))


def count_reviewed_jobs(*, session: Session, after: datetime | None = None) -> int:
    """Jobs with a review newer than `after` (all reviewed jobs when None)."""
    query = select(func.count(func.distinct(Review.job_id)))
    if after is not None:
        query = query.where(Review.created_at > as_utc(after))
    return int(session.scalar(query) or 0)


def latest_review_time(*, session: Session) -> datetime | None:
    return session.scalar(select(func.max(Review.created_at)))


@dataclass(frozen=True)
class ReviewedImage:
    """A reviewed job as training data: its stored image and the labels in force."""

    job_id: str
    image: bytes
    format: str
    width: int
    height: int
    defects: list[str]
    labels: list[str]  # the label set of the model whose result was reviewed
    reviewed_at: datetime


def reviewed_images(
    *, session: Session, until: datetime | None = None, chunk: int = 64
) -> Iterator[ReviewedImage]:
    """Every reviewed job (its latest review up to `until`), oldest first, in chunks.

    Images are read `chunk` at a time, so an export of many reviews never holds all the
    image bytes in memory at once.
    """
    latest = select(func.max(Review.id).label("id")).group_by(Review.job_id)
    if until is not None:
        latest = latest.where(Review.created_at <= until)
    ids = list(session.scalars(select(Review.id).where(Review.id.in_(latest.scalar_subquery()))))
    ids.sort()
    for start in range(0, len(ids), chunk):
        rows = session.execute(
            select(Review, JobImage, Result)
            .join(JobImage, JobImage.job_id == Review.job_id)
            .join(Result, Result.job_id == Review.job_id)
            .where(Review.id.in_(ids[start : start + chunk]))
            .order_by(Review.id)
        ).all()
        for review, image, result in rows:
            yield ReviewedImage(
                job_id=review.job_id,
                image=image.data,
                format=image.format,
                width=image.width,
                height=image.height,
                defects=list(review.defects),
                labels=list(result.probabilities),
                reviewed_at=review.created_at,
            )
