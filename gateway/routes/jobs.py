"""Jobs: submit one image, read a job (optionally holding the answer until it ends)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Header, Query, Response, UploadFile
from fastapi.concurrency import run_in_threadpool

from db import jobs as crud
from db.session import get_sessionmaker
from gateway.deps import CallerDep, CurrentStation, EnqueuerDep, SessionDep, SettingsDep, WatcherDep
from gateway.errors import ApiError
from gateway.metrics import JOBS_ACCEPTED, JOBS_REFUSED
from gateway.schemas import JobPublic, error_responses
from gateway.uploads import UploadRefused, receive_upload

router = APIRouter(prefix="/v1", tags=["jobs"])

MAX_WAIT_S = 30.0
IdField = Annotated[str | None, Form(max_length=200)]


def job_not_found(job_id: str) -> ApiError:
    return ApiError(404, "job_not_found", f"no job {job_id!r} for this station")


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobPublic,
    responses={
        202: {
            "description": "Accepted: the job is stored and queued.",
            "headers": {"Location": {"description": "/v1/jobs/{id}", "schema": {"type": "string"}}},
        },
        200: {"model": JobPublic, "description": "Idempotency-Key seen before: the first job."},
        **error_responses(400, 401, 413, 415, 422),
    },
)
def submit_job(
    response: Response,
    station: CurrentStation,
    session: SessionDep,
    settings: SettingsDep,
    enqueuer: EnqueuerDep,
    file: Annotated[UploadFile, File(description="One image: PNG, JPEG, TIFF or BMP.")],
    module_id: IdField = None,
    cell_id: IdField = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=200,
            description="Same key from the same station returns the first job (200).",
        ),
    ] = None,
) -> JobPublic:
    """Submit one EL image for inspection."""
    if idempotency_key is not None:
        first = crud.find_job_by_idempotency(
            session=session, station_id=station.id, key=idempotency_key
        )
        if first is not None:
            response.status_code = 200
            response.headers["Location"] = f"/v1/jobs/{first.id}"
            return JobPublic.from_job(first)
    try:
        upload = receive_upload(file, settings=settings, module_id=module_id, cell_id=cell_id)
    except UploadRefused as exc:
        JOBS_REFUSED.labels(reason=exc.code).inc()
        raise
    job, created = crud.submit_job(
        session=session, station_id=station.id, upload=upload, idempotency_key=idempotency_key
    )
    if created:
        JOBS_ACCEPTED.labels(endpoint="jobs").inc()
        enqueuer.send([job.id])
    else:
        response.status_code = 200
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobPublic.from_job(job)


def _read_job(database_url: str, job_id: str, station_id: str | None) -> JobPublic | None:
    with get_sessionmaker(database_url)() as session:
        job = crud.get_job_for_station(session=session, job_id=job_id, station_id=station_id)
        return None if job is None else JobPublic.from_job(job)


@router.get("/jobs/{job_id}", response_model=JobPublic, responses=error_responses(401, 404, 422))
async def read_job(
    caller: CallerDep,
    settings: SettingsDep,
    watcher: WatcherDep,
    job_id: str,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=MAX_WAIT_S,
            description="Hold the answer up to this many seconds "
            "until the job has succeeded or failed.",
        ),
    ] = 0,
) -> JobPublic:
    """Read a job (operators: any station's); with `wait`, answer as soon as it ends."""
    station_id = caller.scope
    job = await run_in_threadpool(_read_job, settings.database_url, job_id, station_id)
    if job is None:
        raise job_not_found(job_id)
    if wait > 0 and job.status not in ("succeeded", "failed"):
        await watcher.wait(job_id, wait)
        job = await run_in_threadpool(_read_job, settings.database_url, job_id, station_id)
        if job is None:  # deleted while we waited
            raise job_not_found(job_id)
    return job
