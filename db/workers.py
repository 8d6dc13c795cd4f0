"""The workers table: each worker's heartbeat, and what the live ones say about the queues.

A worker writes its row every few seconds (`record_heartbeat`) and deletes it when it stops
cleanly (`remove_worker`); one killed leaves a row that simply stops being fresh. Readers ask
for the live ones (`live_workers`) and count them per queue (`QueueCounts`). Keyword-only
arguments; the caller owns the session and commits.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from db.models import Worker, utcnow

# Rows of workers gone this long are deleted by the next heartbeat of any worker.
FORGET_AFTER = timedelta(days=1)


@dataclass(frozen=True)
class WorkerSeen:
    name: str
    queue: str
    device: str
    model_name: str | None
    model_version: str | None
    model_error: str | None
    last_seen_at: datetime


@dataclass
class QueueCounts:
    """Live workers per queue, and among them those serving the model asked about."""

    consumers: dict[str, int] = field(default_factory=dict)
    serving: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, workers: Iterable[WorkerSeen], model_name: str) -> QueueCounts:
        counts = cls()
        for worker in workers:
            counts.consumers[worker.queue] = counts.consumers.get(worker.queue, 0) + 1
            if worker.model_name == model_name and worker.model_version is not None:
                counts.serving[worker.queue] = counts.serving.get(worker.queue, 0) + 1
        return counts


def record_heartbeat(
    *,
    session: Session,
    name: str,
    queue: str,
    device: str,
    model_name: str | None,
    model_version: str | None,
    model_error: str | None,
    now: datetime | None = None,
) -> None:
    """Insert or refresh this worker's row (only its own process writes it)."""
    now = now or utcnow()
    values = {
        "queue": queue,
        "device": device,
        "model_name": model_name,
        "model_version": model_version,
        "model_error": model_error,
        "last_seen_at": now,
    }
    updated = session.execute(
        update(Worker)
        .where(Worker.name == name)
        .values(**values)
        .returning(Worker.name)
        .execution_options(synchronize_session=False)
    ).first()
    if updated is None:
        session.execute(insert(Worker).values(name=name, started_at=now, **values))
    session.execute(delete(Worker).where(Worker.last_seen_at < now - FORGET_AFTER))
    session.flush()


def remove_worker(*, session: Session, name: str) -> None:
    session.execute(delete(Worker).where(Worker.name == name))
    session.flush()


def live_workers(
    *, session: Session, stale_after_s: float, now: datetime | None = None
) -> list[WorkerSeen]:
    """Workers seen within `stale_after_s`, by queue and name."""
    now = now or utcnow()
    rows = session.scalars(
        select(Worker)
        .where(Worker.last_seen_at >= now - timedelta(seconds=stale_after_s))
        .order_by(Worker.queue, Worker.name)
    )
    return [
        WorkerSeen(
            name=w.name,
            queue=w.queue,
            device=w.device,
            model_name=w.model_name,
            model_version=w.model_version,
            model_error=w.model_error,
            last_seen_at=w.last_seen_at,
        )
        for w in rows
    ]
