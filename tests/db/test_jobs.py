"""Gateway-side data access (db.jobs) on a migrated SQLite database."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db import jobs as crud
from db.models import FILENAME_LENGTH, Job, JobImage, JobStatus, StationToken
from db.session import get_sessionmaker


@dataclass(frozen=True)
class Meta:
    format: str = "PNG"
    width: int = 8
    height: int = 4


def new_image(data: bytes = b"png-bytes", **fields: str) -> crud.NewImage:
    return crud.NewImage(data=data, meta=Meta(), **fields)


@pytest.fixture
def session(db_url: str) -> Iterator[Session]:
    with get_sessionmaker(db_url)() as s:
        yield s


def test_token_is_stored_only_as_its_sha256(session: Session) -> None:
    station = crud.create_station(session=session, name="line-1")
    token = crud.create_token(session=session, station_id=station.id)
    session.commit()

    stored = session.scalars(select(StationToken.token_hash)).all()
    assert stored == [hashlib.sha256(token.encode()).hexdigest()]
    found = crud.station_for_token(session=session, token=token)
    assert found is not None and found.id == station.id
    assert crud.station_for_token(session=session, token=token + "x") is None


def test_get_or_create_station_is_idempotent(session: Session) -> None:
    first = crud.get_or_create_station(session=session, name="line-1")
    again = crud.get_or_create_station(session=session, name="line-1")
    assert first.id == again.id


def test_submit_job_writes_job_and_image_together(session: Session) -> None:
    station = crud.get_or_create_station(session=session, name="line-1")

    job, created = crud.submit_job(
        session=session, station_id=station.id, upload=new_image(module_id="M-1")
    )

    assert created and job.status == JobStatus.queued
    image = session.get(JobImage, job.id)
    assert image is not None and image.data == b"png-bytes" and image.width == 8


def test_create_job_rolled_back_leaves_neither_row(session: Session) -> None:
    station = crud.get_or_create_station(session=session, name="line-1")
    crud.create_job(
        session=session, station_id=station.id, upload=crud.NewImage(data=b"x", meta=Meta())
    )
    session.rollback()

    assert session.scalar(select(func.count()).select_from(Job)) == 0
    assert session.scalar(select(func.count()).select_from(JobImage)) == 0


def test_idempotency_key_returns_the_first_job_per_station(session: Session) -> None:
    one = crud.get_or_create_station(session=session, name="line-1")
    two = crud.get_or_create_station(session=session, name="line-2")

    first, created = crud.submit_job(
        session=session, station_id=one.id, upload=new_image(), idempotency_key="k"
    )
    again, created_again = crud.submit_job(
        session=session, station_id=one.id, upload=new_image(b"other"), idempotency_key="k"
    )
    other, created_other = crud.submit_job(
        session=session, station_id=two.id, upload=new_image(), idempotency_key="k"
    )

    assert (created, created_again, created_other) == (True, False, True)
    assert again.id == first.id and other.id != first.id


def test_batch_jobs_come_back_in_upload_order_and_per_station(session: Session) -> None:
    one = crud.get_or_create_station(session=session, name="line-1")
    two = crud.get_or_create_station(session=session, name="line-2")
    uploads = [new_image(f"img-{i}".encode(), filename=f"{i}.png") for i in range(5)]

    batch, jobs, created = crud.create_batch(session=session, station_id=one.id, uploads=uploads)

    assert created
    listed = crud.get_batch_jobs(session=session, batch_id=batch.id)
    assert [j.id for j in listed] == [j.id for j in jobs]
    assert [j.filename for j in listed] == [f"{i}.png" for i in range(5)]
    assert crud.get_batch_for_station(session=session, batch_id=batch.id, station_id=two.id) is None
    assert crud.get_job_for_station(session=session, job_id=jobs[0].id, station_id=two.id) is None
    assert crud.get_job_for_station(session=session, job_id=jobs[0].id, station_id=one.id)


def test_batch_idempotency_key_returns_the_first_batch_per_station(session: Session) -> None:
    one = crud.get_or_create_station(session=session, name="line-1")
    two = crud.get_or_create_station(session=session, name="line-2")

    def uploads() -> list[crud.NewImage]:
        return [new_image(filename=f"{i}.png") for i in range(3)]

    first, jobs, created = crud.create_batch(
        session=session, station_id=one.id, uploads=uploads(), idempotency_key="b-1"
    )
    again, again_jobs, created_again = crud.create_batch(
        session=session, station_id=one.id, uploads=uploads(), idempotency_key="b-1"
    )
    other, _, created_other = crud.create_batch(
        session=session, station_id=two.id, uploads=uploads(), idempotency_key="b-1"
    )

    assert (created, created_again, created_other) == (True, False, True)
    assert again.id == first.id and other.id != first.id
    assert [j.id for j in again_jobs] == [j.id for j in jobs]
    assert crud.count_jobs(session=session) == 6


def test_a_file_name_longer_than_its_column_is_stored_cut(session: Session) -> None:
    station = crud.get_or_create_station(session=session, name="line-1")
    name = "x" * 2000 + ".png"

    job, _ = crud.submit_job(
        session=session, station_id=station.id, upload=new_image(filename=name)
    )

    session.expire_all()
    stored = session.get(Job, job.id)
    assert stored is not None and stored.filename == name[:FILENAME_LENGTH]
    assert len(stored.filename) == 500


def test_finished_job_ids_sees_only_ended_jobs(session: Session) -> None:
    station = crud.get_or_create_station(session=session, name="line-1")
    a, _ = crud.submit_job(session=session, station_id=station.id, upload=new_image())
    b, _ = crud.submit_job(session=session, station_id=station.id, upload=new_image())
    a.status = JobStatus.failed
    session.commit()

    assert crud.finished_job_ids(session=session, job_ids=[a.id, b.id, "missing"]) == {a.id}
    assert crud.finished_job_ids(session=session, job_ids=[]) == set()
