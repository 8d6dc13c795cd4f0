"""Jobs: submit one image, read a job (optionally holding the answer until it ends)."""

from __future__ import annotations

import threading
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from db import jobs as crud
from db.models import JobStatus
from db.session import get_autocommit_sessionmaker
from eldefect.settings import Settings
from gateway.deps import (
    CallerDep,
    CurrentStation,
    DecodeSlotsDep,
    EnqueuerDep,
    IdempotencyKeyDep,
    SessionDep,
    SettingsDep,
    WatcherDep,
)
from gateway.enqueue import Enqueuer
from gateway.errors import ApiError
from gateway.forms import invalid, read_form
from gateway.metrics import JOBS_ACCEPTED, JOBS_REFUSED
from gateway.schemas import FILE_SCHEMA, ID_SCHEMA, JobPublic, error_responses, multipart_body
from gateway.uploads import FilePart, UploadRefused, receive_upload

router = APIRouter(prefix="/v1", tags=["jobs"])

MAX_WAIT_S = 30.0
ENDED = (JobStatus.succeeded, JobStatus.failed)
# module_id, cell_id and a few stray text fields; anything more is not a job's form.
_MAX_FIELDS = 16


_ECHOED_ID_CHARS = 64  # job ids are 32 hex characters; a longer one is not echoed whole


def job_not_found(job_id: str) -> ApiError:
    shown = job_id if len(job_id) <= _ECHOED_ID_CHARS else f"{job_id[:_ECHOED_ID_CHARS]}..."
    return ApiError(404, "job_not_found", f"no job {shown!r} for this station")


def _first_job(*, database_url: str, station_id: str, key: str) -> JobPublic | None:
    # A session of its own, closed before the body streams in: the request's session would
    # keep its connection checked out through a slow upload and the wait for a decode slot,
    # and a few dozen keyed uploads would then empty the pool for everyone.
    with get_autocommit_sessionmaker(database_url)() as session:
        job = crud.find_job_by_idempotency(session=session, station_id=station_id, key=key)
        return None if job is None else JobPublic.from_job(job)


def _accept_job(
    *,
    session: Session,
    settings: Settings,
    slots: threading.BoundedSemaphore,
    enqueuer: Enqueuer,
    station_id: str,
    part: FilePart,
    idempotency_key: str | None,
) -> tuple[JobPublic, bool]:
    """Validate the file, store the job (or find the key's first job) and enqueue a new one.

    The answer is built here, in the worker thread: nothing may wait for the database on the
    event loop, or one request waiting for a pooled connection stops them all."""
    try:
        upload = receive_upload(part, settings=settings, slots=slots)
    except UploadRefused as exc:
        JOBS_REFUSED.labels(reason=exc.code).inc()
        raise
    job, created = crud.submit_job(
        session=session, station_id=station_id, upload=upload, idempotency_key=idempotency_key
    )
    if created:
        JOBS_ACCEPTED.labels(endpoint="jobs").inc()
        enqueuer.send([job.id])
    return JobPublic.from_job(job), created


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
        **error_responses(400, 401, 413, 415, 422, 503),
    },
    openapi_extra=multipart_body(
        {
            "file": FILE_SCHEMA | {"description": "One image: PNG, JPEG, TIFF or BMP."},
            "module_id": ID_SCHEMA,
            "cell_id": ID_SCHEMA,
        },
        required=["file"],
    ),
)
async def submit_job(
    request: Request,
    response: Response,
    station: CurrentStation,
    session: SessionDep,
    settings: SettingsDep,
    enqueuer: EnqueuerDep,
    slots: DecodeSlotsDep,
    idempotency_key: IdempotencyKeyDep,
) -> JobPublic:
    """Submit one EL image for inspection."""
    # The token was checked from the headers (CurrentStation); only now is the body read.
    if idempotency_key is not None:
        first = await run_in_threadpool(
            _first_job,
            database_url=settings.database_url,
            station_id=station.id,
            key=idempotency_key,
        )
        if first is not None:  # a retry: answered without reading its body
            response.status_code = 200
            response.headers["Location"] = f"/v1/jobs/{first.id}"
            return first
    form = await read_form(
        request,
        file_field="file",
        max_files=1,
        max_fields=_MAX_FIELDS,
        too_many_files=invalid(
            "file: send one file part per request, in the field `file` (POST /v1/batches "
            "takes several); module_id and cell_id are text fields"
        ),
    )
    try:
        files = form.files("file")
        if not files:
            raise invalid("file: field required (one image as a multipart file part)")
        part = FilePart(files[0], module_id=form.text("module_id"), cell_id=form.text("cell_id"))
        job, created = await run_in_threadpool(
            _accept_job,
            session=session,
            settings=settings,
            slots=slots,
            enqueuer=enqueuer,
            station_id=station.id,
            part=part,
            idempotency_key=idempotency_key,
        )
    finally:
        await form.close()
    if not created:
        response.status_code = 200
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job


# Reads are single statements: autocommit sessions spare BEGIN and ROLLBACK round trips.
def _read_job(database_url: str, job_id: str, station_id: str | None) -> JobPublic | None:
    with get_autocommit_sessionmaker(database_url)() as session:
        job = crud.get_job_for_station(session=session, job_id=job_id, station_id=station_id)
        return None if job is None else JobPublic.from_job(job)


def _read_status(database_url: str, job_id: str, station_id: str | None) -> JobStatus | None:
    with get_autocommit_sessionmaker(database_url)() as session:
        return crud.job_status_for_station(session=session, job_id=job_id, station_id=station_id)


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
    station_id, url = caller.scope, settings.database_url
    if wait > 0:
        # A station asks right after its upload, before the job ends: look at the status
        # alone, and read the whole job once, when it has ended or the wait is over.
        status = await run_in_threadpool(_read_status, url, job_id, station_id)
        if status is None:
            raise job_not_found(job_id)
        if status not in ENDED:
            await watcher.wait(job_id, wait)
    job = await run_in_threadpool(_read_job, url, job_id, station_id)
    if job is None:  # no such job for this caller (or deleted while we waited)
        raise job_not_found(job_id)
    return job
