"""Batches: several images in one request, all validated before any job is made."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from db import jobs as crud
from db.models import Batch, Job
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
)
from gateway.enqueue import Enqueuer
from gateway.errors import ApiError
from gateway.forms import batch_ids, invalid, read_form
from gateway.metrics import JOBS_ACCEPTED, JOBS_REFUSED
from gateway.schemas import (
    FILE_SCHEMA,
    ID_SCHEMA,
    BatchPublic,
    JobPublic,
    error_responses,
    multipart_body,
)
from gateway.uploads import FilePart, UploadRefused, check_batch, stored_uploads

router = APIRouter(prefix="/v1", tags=["batches"])


def _public(batch: Batch, jobs: Sequence[Job]) -> BatchPublic:
    return BatchPublic(id=batch.id, jobs=[JobPublic.from_job(job) for job in jobs])


def _first_batch(*, database_url: str, station_id: str, key: str) -> BatchPublic | None:
    # Its own short session, as `jobs._first_job` explains: none is held while the body streams.
    with get_autocommit_sessionmaker(database_url)() as session:
        batch = crud.find_batch_by_idempotency(session=session, station_id=station_id, key=key)
        if batch is None:
            return None
        return _public(batch, crud.get_batch_jobs(session=session, batch_id=batch.id))


def _accept_batch(
    *,
    session: Session,
    settings: Settings,
    slots: threading.BoundedSemaphore,
    enqueuer: Enqueuer,
    station_id: str,
    parts: Sequence[FilePart],
    idempotency_key: str | None,
) -> tuple[Batch, list[Job], bool]:
    """Validate every file (one bad file refuses all), then store them as one batch.

    Files are read from their spools one at a time, twice: to validate, then to store, so
    memory holds one file's bytes, not the batch's.
    """
    try:
        infos = check_batch(parts, settings=settings, slots=slots)
    except UploadRefused as exc:
        JOBS_REFUSED.labels(reason=exc.code).inc()
        raise UploadRefused(
            exc.status_code, exc.code, f"batch refused, no jobs made: {exc.message}"
        ) from None
    batch, jobs, created = crud.create_batch(
        session=session,
        station_id=station_id,
        uploads=stored_uploads(parts, infos, settings=settings),
        idempotency_key=idempotency_key,
    )
    if created:
        JOBS_ACCEPTED.labels(endpoint="batches").inc(len(jobs))
        enqueuer.send([job.id for job in jobs])
    return batch, jobs, created


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
        200: {"model": BatchPublic, "description": "Idempotency-Key seen before: the first batch."},
        **error_responses(400, 401, 413, 415, 422, 503),
    },
    openapi_extra=multipart_body(
        {
            "files": {
                "type": "array",
                "items": FILE_SCHEMA,
                "description": "Repeated field: one image per part.",
            },
            "module_id": ID_SCHEMA
            | {"description": "Once (every file) or once per file, in file order."},
            "cell_id": ID_SCHEMA
            | {"description": "Once (every file) or once per file, in file order."},
            "manifest": {
                "type": "string",
                "description": 'JSON list, one entry per file: [{"module_id": "M-1", '
                '"cell_id": "C-01"}, ...]; an entry\'s value wins over the fields.',
            },
        },
        required=["files"],
    ),
)
async def submit_batch(
    request: Request,
    response: Response,
    station: CurrentStation,
    session: SessionDep,
    settings: SettingsDep,
    enqueuer: EnqueuerDep,
    slots: DecodeSlotsDep,
    idempotency_key: IdempotencyKeyDep,
) -> BatchPublic:
    """Submit several EL images at once; one bad file refuses the whole batch."""
    # The token was checked from the headers (CurrentStation); only now is the body read.
    if idempotency_key is not None:
        first = await run_in_threadpool(
            _first_batch,
            database_url=settings.database_url,
            station_id=station.id,
            key=idempotency_key,
        )
        if first is not None:  # a retry: answered without reading its body
            response.status_code = 200
            response.headers["Location"] = f"/v1/batches/{first.id}"
            return first
    limit = settings.max_batch_files
    too_many = ApiError(413, "too_many_files", f"a batch holds at most {limit} files")
    try:
        form = await read_form(
            request,
            file_field="files",
            max_files=limit,
            max_fields=2 * limit + 8,
            too_many_files=too_many,
        )
    except ApiError as exc:
        if exc is too_many:
            JOBS_REFUSED.labels(reason="too_many_files").inc()
        raise
    try:
        files = form.files("files")
        if not files:
            raise invalid("files: field required (one image per part)")
        parts = [
            FilePart(file, module_id=module_id, cell_id=cell_id, index=index)
            for index, (file, (module_id, cell_id)) in enumerate(
                zip(files, batch_ids(form, len(files)), strict=True)
            )
        ]
        batch, jobs, created = await run_in_threadpool(
            _accept_batch,
            session=session,
            settings=settings,
            slots=slots,
            enqueuer=enqueuer,
            station_id=station.id,
            parts=parts,
            idempotency_key=idempotency_key,
        )
    finally:
        await form.close()
    if not created:
        response.status_code = 200
    response.headers["Location"] = f"/v1/batches/{batch.id}"
    return _public(batch, jobs)


@router.get(
    "/batches/{batch_id}", response_model=BatchPublic, responses=error_responses(401, 404, 503)
)
def read_batch(
    caller: CallerDep,
    session: SessionDep,
    batch_id: str,
) -> BatchPublic:
    """Read a batch with the current state of each of its jobs (operators: any station's)."""
    batch = crud.get_batch_for_station(session=session, batch_id=batch_id, station_id=caller.scope)
    if batch is None:
        raise ApiError(404, "batch_not_found", f"no batch {batch_id!r} for this station")
    return _public(batch, crud.get_batch_jobs(session=session, batch_id=batch.id))
