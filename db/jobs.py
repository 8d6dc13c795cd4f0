"""Gateway-side data access: stations and their tokens, accepting jobs and batches, reading them.

Keyword-only arguments; the caller owns the session. Functions that accept work (`submit_job`,
`create_batch`) commit, because "the job row and its image are durable" is what a 202 means;
the others only flush. db imports nothing of ours: image metadata comes in as anything with
`format`, `width` and `height` (eldefect.imaging.ImageInfo fits).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload, selectinload
from sqlalchemy.orm.attributes import set_committed_value

from db.models import (
    FILENAME_LENGTH,
    Batch,
    Job,
    JobImage,
    JobStatus,
    Station,
    StationToken,
    TokenRole,
    new_id,
    utcnow,
)

TOKEN_BYTES = 32
FINISHED = (JobStatus.succeeded, JobStatus.failed)


class ImageMeta(Protocol):
    """What the database keeps about an upload besides its bytes."""

    @property
    def format(self) -> str: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...


@dataclass(frozen=True)
class NewImage:
    """One validated upload, ready to become a job."""

    data: bytes
    meta: ImageMeta
    filename: str | None = None
    module_id: str | None = None
    cell_id: str | None = None


@dataclass(frozen=True)
class TokenInfo:
    """A token as `eldefect token list` shows it: never the token, only a hash prefix."""

    station: str
    hash_prefix: str
    created_at: datetime
    revoked_at: datetime | None
    role: str = TokenRole.station.value


# --- stations and tokens -------------------------------------------------------------------


def hash_token(token: str) -> str:
    """SHA-256 hex digest: tokens are random 256-bit strings, so no salt or slow hash needed."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def get_station_by_name(*, session: Session, name: str) -> Station | None:
    return session.scalars(select(Station).where(Station.name == name)).one_or_none()


def create_station(*, session: Session, name: str) -> Station:
    """Add a station; the name must be new (it is unique)."""
    station = Station(name=name)
    session.add(station)
    session.flush()
    return station


def get_or_create_station(*, session: Session, name: str) -> Station:
    """The station called `name`, created (and committed) when missing; safe under races."""
    station = get_station_by_name(session=session, name=name)
    if station is not None:
        return station
    try:
        with session.begin_nested():
            station = create_station(session=session, name=name)
    except IntegrityError:  # another process created it in between
        station = get_station_by_name(session=session, name=name)
        if station is None:
            raise
    session.commit()
    return station


def create_token(*, session: Session, station_id: str, role: TokenRole = TokenRole.station) -> str:
    """Issue a bearer token for a station; returns the plaintext, which is stored only hashed."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    session.add(
        StationToken(token_hash=hash_token(token), station_id=station_id, role=TokenRole(role))
    )
    session.flush()
    return token


def caller_for_token(*, session: Session, token: str) -> tuple[Station, TokenRole] | None:
    """The station a (not revoked) token belongs to and the token's role, or None."""
    query = (
        select(Station, StationToken.role)
        .join(StationToken, StationToken.station_id == Station.id)
        .where(StationToken.token_hash == hash_token(token), StationToken.revoked_at.is_(None))
    )
    row = session.execute(query).one_or_none()
    return None if row is None else (row[0], TokenRole(row[1]))


def station_for_token(*, session: Session, token: str) -> Station | None:
    """The station a (not revoked) token belongs to, or None."""
    found = caller_for_token(session=session, token=token)
    return None if found is None else found[0]


def list_tokens(*, session: Session) -> list[TokenInfo]:
    rows = session.execute(
        select(
            Station.name,
            StationToken.token_hash,
            StationToken.created_at,
            StationToken.revoked_at,
            StationToken.role,
        )
        .join(StationToken, StationToken.station_id == Station.id)
        .order_by(Station.name, StationToken.created_at)
    ).all()
    return [
        TokenInfo(
            station=name,
            hash_prefix=digest[:12],
            created_at=created,
            revoked_at=revoked,
            role=role,
        )
        for name, digest, created, revoked, role in rows
    ]


def revoke_tokens(*, session: Session, station_id: str) -> int:
    """Revoke every live token of a station; returns how many."""
    tokens = session.scalars(
        select(StationToken).where(
            StationToken.station_id == station_id, StationToken.revoked_at.is_(None)
        )
    ).all()
    now = utcnow()
    for token in tokens:
        token.revoked_at = now
    session.flush()
    return len(tokens)


# --- accepting work ------------------------------------------------------------------------


def create_job(
    *,
    session: Session,
    station_id: str,
    upload: NewImage,
    idempotency_key: str | None = None,
    batch_id: str | None = None,
    batch_position: int | None = None,
) -> Job:
    """Add a queued job and its image (one unit: both or neither once the caller commits).

    The image goes in by a plain INSERT, not as an ORM object: the session then keeps no
    reference to its bytes, so a batch holds one file's bytes at a time, not all of them.
    """
    now = utcnow()
    # A client's file name is kept for people, not matched on: a longer one is cut to fit.
    filename = upload.filename[:FILENAME_LENGTH] if upload.filename is not None else None
    if filename is not None:  # PostgreSQL text cannot hold NUL; the name is only shown
        filename = filename.replace("\x00", "\ufffd")
    job = Job(
        id=new_id(),
        station_id=station_id,
        batch_id=batch_id,
        batch_position=batch_position,
        status=JobStatus.queued,
        module_id=upload.module_id,
        cell_id=upload.cell_id,
        filename=filename,
        idempotency_key=idempotency_key,
        created_at=now,
        enqueued_at=now,
    )
    session.add(job)
    session.flush()
    # A new job has no result and no review: say so, so that reading them (the answer to
    # the upload) costs no query, and never a lazy load from wherever the answer is built.
    set_committed_value(job, "result", None)
    set_committed_value(job, "reviews", [])
    meta = upload.meta
    session.execute(
        insert(JobImage).values(
            job_id=job.id,
            data=upload.data,
            format=meta.format,
            width=meta.width,
            height=meta.height,
        )
    )
    return job


def find_job_by_idempotency(*, session: Session, station_id: str, key: str) -> Job | None:
    query = (
        select(Job)
        .where(Job.station_id == station_id, Job.idempotency_key == key)
        .options(selectinload(Job.result), selectinload(Job.reviews))
    )
    return session.scalars(query).one_or_none()


def submit_job(
    *,
    session: Session,
    station_id: str,
    upload: NewImage,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """Accept one upload and commit; returns (job, created).

    With an idempotency key already used by this station, the first job comes back with
    created=False and nothing is written. Two requests racing with the same key meet at the
    unique constraint; the loser returns the winner's job.
    """
    if idempotency_key is not None:
        existing = find_job_by_idempotency(
            session=session, station_id=station_id, key=idempotency_key
        )
        if existing is not None:
            return existing, False
    try:
        job = create_job(
            session=session, station_id=station_id, upload=upload, idempotency_key=idempotency_key
        )
        session.commit()
    except IntegrityError:
        session.rollback()
        if idempotency_key is None:
            raise
        existing = find_job_by_idempotency(
            session=session, station_id=station_id, key=idempotency_key
        )
        if existing is None:
            raise
        return existing, False
    return job, True


def find_batch_by_idempotency(*, session: Session, station_id: str, key: str) -> Batch | None:
    query = select(Batch).where(Batch.station_id == station_id, Batch.idempotency_key == key)
    return session.scalars(query).one_or_none()


def create_batch(
    *,
    session: Session,
    station_id: str,
    uploads: Iterable[NewImage],
    idempotency_key: str | None = None,
) -> tuple[Batch, list[Job], bool]:
    """Accept several uploads as one batch, all in one transaction, and commit.

    Returns (batch, its jobs in upload order, created). `uploads` is consumed one at a time,
    so an iterator that reads each file when asked keeps one file in memory. With an
    idempotency key this station used before (or that a concurrent request wins at the
    unique constraint), nothing is written and the first batch comes back with
    created=False.
    """
    if idempotency_key is not None:
        existing = find_batch_by_idempotency(
            session=session, station_id=station_id, key=idempotency_key
        )
        if existing is not None:
            return existing, get_batch_jobs(session=session, batch_id=existing.id), False
    try:
        batch = Batch(station_id=station_id, idempotency_key=idempotency_key, created_at=utcnow())
        session.add(batch)
        session.flush()
        jobs = [
            create_job(
                session=session,
                station_id=station_id,
                upload=upload,
                batch_id=batch.id,
                batch_position=position,
            )
            for position, upload in enumerate(uploads)
        ]
        session.commit()
    except IntegrityError:
        session.rollback()
        if idempotency_key is None:
            raise
        existing = find_batch_by_idempotency(
            session=session, station_id=station_id, key=idempotency_key
        )
        if existing is None:
            raise
        return existing, get_batch_jobs(session=session, batch_id=existing.id), False
    return batch, jobs, True


# --- reading -------------------------------------------------------------------------------


def _cannot_exist(id_: str) -> bool:
    # No stored id holds NUL, and PostgreSQL refuses it in a query's text: "not found".
    return "\x00" in id_


def get_job_for_station(*, session: Session, job_id: str, station_id: str | None) -> Job | None:
    """The job with its result and reviews (one query), or None when it does not exist or
    belongs to another station.

    `station_id=None` reads any station's job (operators).
    """
    if _cannot_exist(job_id):
        return None
    query = (
        select(Job)
        .where(Job.id == job_id)
        .options(joinedload(Job.result), joinedload(Job.reviews))
        .execution_options(populate_existing=True)
    )
    if station_id is not None:
        query = query.where(Job.station_id == station_id)
    return session.scalars(query).unique().one_or_none()


def job_status_for_station(
    *, session: Session, job_id: str, station_id: str | None
) -> JobStatus | None:
    """The job's status alone (a long-poll's first look), None as for `get_job_for_station`."""
    if _cannot_exist(job_id):
        return None
    query = select(Job.status).where(Job.id == job_id)
    if station_id is not None:
        query = query.where(Job.station_id == station_id)
    return session.scalars(query).one_or_none()


def get_batch_for_station(
    *, session: Session, batch_id: str, station_id: str | None
) -> Batch | None:
    """The batch, or None when it does not exist or belongs to another station.

    `station_id=None` reads any station's batch (operators).
    """
    if _cannot_exist(batch_id):
        return None
    query = select(Batch).where(Batch.id == batch_id)
    if station_id is not None:
        query = query.where(Batch.station_id == station_id)
    return session.scalars(query).one_or_none()


def get_batch_jobs(*, session: Session, batch_id: str) -> list[Job]:
    """The batch's jobs in upload order, with their results."""
    query = (
        select(Job)
        .where(Job.batch_id == batch_id)
        .order_by(Job.batch_position, Job.created_at, Job.id)
        .options(selectinload(Job.result), selectinload(Job.reviews))
        .execution_options(populate_existing=True)
    )
    return list(session.scalars(query))


def finished_job_ids(*, session: Session, job_ids: Sequence[str]) -> set[str]:
    """Which of these jobs have ended (succeeded or failed); one query for all of them."""
    if not job_ids:
        return set()
    query = select(Job.id).where(Job.id.in_(list(job_ids)), Job.status.in_(FINISHED))
    return set(session.scalars(query))


def count_jobs(*, session: Session, station_id: str | None = None) -> int:
    query = select(func.count()).select_from(Job)
    if station_id is not None:
        query = query.where(Job.station_id == station_id)
    return int(session.scalar(query) or 0)
