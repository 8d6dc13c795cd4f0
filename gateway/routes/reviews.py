"""Operator reviews: say what a served image really shows; list the reviews."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from db import jobs as crud
from db import reviews
from gateway.deps import OperatorDep, SessionDep, operator_json
from gateway.errors import ApiError
from gateway.routes.jobs import job_not_found
from gateway.schemas import (
    ReviewCreate,
    ReviewList,
    ReviewPublic,
    TimeQuery,
    error_responses,
    json_body,
)

router = APIRouter(prefix="/v1", tags=["operators"])

# ReviewRefused codes -> HTTP status.
_STATUS = {"job_not_succeeded": 409, "unknown_labels": 422}


@router.post(
    "/jobs/{job_id}/review",
    status_code=201,
    response_model=ReviewPublic,
    responses=error_responses(401, 403, 404, 409, 422),
    openapi_extra=json_body(ReviewCreate),
)
def review_job(
    job_id: str,
    caller: OperatorDep,
    body: Annotated[ReviewCreate, Depends(operator_json(ReviewCreate))],
    session: SessionDep,
) -> ReviewPublic:
    """Record what the image of a succeeded job really shows (supersedes earlier reviews)."""
    job = crud.get_job_for_station(session=session, job_id=job_id, station_id=caller.scope)
    if job is None:
        raise job_not_found(job_id)
    try:
        review = reviews.create_review(
            session=session,
            job=job,
            defects=body.defects,
            comment=body.comment,
            reviewer_id=caller.station.id,
        )
    except reviews.ReviewRefused as exc:
        raise ApiError(_STATUS[exc.code], exc.code, exc.message) from None
    session.commit()
    return ReviewPublic.from_review(review)


@router.get("/reviews", response_model=ReviewList, responses=error_responses(401, 403, 422))
def list_reviews(
    _caller: OperatorDep,
    session: SessionDep,
    since: Annotated[
        TimeQuery | None,
        Query(
            description="Only reviews made after this time (ISO 8601), oldest first: "
            "page on with the last one's reviewed_at."
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ReviewList:
    """The latest reviews, newest first; with `since`, the reviews after it, oldest first."""
    rows = reviews.list_reviews(session=session, since=since, limit=limit)
    return ReviewList(reviews=[ReviewPublic.from_review(r) for r in rows])
