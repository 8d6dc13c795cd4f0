"""Batches: several images in one request, all validated before any job is made."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Response, UploadFile

from db import jobs as crud
from db.jobs import NewImage
from gateway.deps import CurrentStation, EnqueuerDep, SessionDep, SettingsDep
from gateway.errors import ApiError
from gateway.metrics import JOBS_ACCEPTED, JOBS_REFUSED
from gateway.schemas import BatchPublic, JobPublic, error_responses
from gateway.uploads import UploadRefused, receive_upload

router = APIRouter(prefix="/v1", tags=["batches"])


@router.post(
    "/batches",
    status_code=202,
    response_model=BatchPublic,
    responses={
        202: {
            "description": "Accepted: one queued job per file.",
            "headers": {
                "Location": {"description": "/v1/batches/{id}", "schema": {"type": "string"}}
            },
        },
        **error_responses(400, 401, 413, 415, 422),
    },
)
def submit_batch(
    response: Response,
    station: CurrentStation,
    session: SessionDep,
    settings: SettingsDep,
    enqueuer: EnqueuerDep,
    files: Annotated[list[UploadFile], File(description="Repeated field: one image per part.")],
    module_id: Annotated[
        str | None, Form(max_length=200, description="Applies to every job of the batch.")
    ] = None,
) -> BatchPublic:
    """Submit several EL images at once; one bad file refuses the whole batch."""
    if len(files) > settings.max_batch_files:
        JOBS_REFUSED.labels(reason="too_many_files").inc(len(files))
        raise ApiError(
            413,
            "too_many_files",
            f"a batch holds at most {settings.max_batch_files} files; got {len(files)}",
        )
    uploads: list[NewImage] = []
    for index, file in enumerate(files):
        try:
            uploads.append(
                receive_upload(file, settings=settings, index=index, module_id=module_id)
            )
        except UploadRefused as exc:
            JOBS_REFUSED.labels(reason=exc.code).inc()
            raise UploadRefused(
                exc.status_code, exc.code, f"batch refused, no jobs made: {exc.message}"
            ) from None
    batch, jobs = crud.create_batch(session=session, station_id=station.id, uploads=uploads)
    JOBS_ACCEPTED.labels(endpoint="batches").inc(len(jobs))
    enqueuer.send([job.id for job in jobs])
    response.headers["Location"] = f"/v1/batches/{batch.id}"
    return BatchPublic(id=batch.id, jobs=[JobPublic.from_job(job) for job in jobs])


@router.get("/batches/{batch_id}", response_model=BatchPublic, responses=error_responses(401, 404))
def read_batch(
    station: CurrentStation,
    session: SessionDep,
    batch_id: str,
) -> BatchPublic:
    """Read a batch with the current state of each of its jobs."""
    batch = crud.get_batch_for_station(session=session, batch_id=batch_id, station_id=station.id)
    if batch is None:
        raise ApiError(404, "batch_not_found", f"no batch {batch_id!r} for this station")
    jobs = crud.get_batch_jobs(session=session, batch_id=batch.id)
    return BatchPublic(id=batch.id, jobs=[JobPublic.from_job(job) for job in jobs])
