"""Small factories for worker tests: stations, jobs with image bytes, PNG images."""

from __future__ import annotations

import io
from datetime import datetime

import numpy as np
from PIL import Image
from sqlalchemy.orm import Session

from db.models import Job, JobImage, JobStatus, Station, new_id


def png_bytes(seed: int = 0, size: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = (rng.random((size, size)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def make_station(session: Session, name: str | None = None) -> Station:
    station = Station(name=name or f"station-{new_id()[:8]}")
    session.add(station)
    session.flush()
    return station


def make_job(
    session: Session,
    *,
    station: Station,
    data: bytes | None = None,
    status: JobStatus = JobStatus.queued,
    created_at: datetime | None = None,
    enqueued_at: datetime | None = None,
    lease_expires_at: datetime | None = None,
    attempts: int = 0,
) -> Job:
    data = png_bytes() if data is None else data
    job = Job(station_id=station.id, status=status, attempts=attempts, filename="cell.png")
    if created_at is not None:
        job.created_at = created_at
    if enqueued_at is not None:
        job.enqueued_at = enqueued_at
    job.lease_expires_at = lease_expires_at
    job.image = JobImage(data=data, format="PNG", width=48, height=48)
    session.add(job)
    session.flush()
    return job
