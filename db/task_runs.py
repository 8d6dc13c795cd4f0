"""When each periodic task last ran (task_runs): written by the task, read by the exporter."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from db.models import TaskRun, utcnow


def mark_task_run(*, session: Session, name: str, now: datetime | None = None) -> None:
    """Set `name`'s last run to `now` (insert the row the first time)."""
    now = now or utcnow()
    run = session.get(TaskRun, name)
    if run is None:
        session.add(TaskRun(name=name, last_run_at=now))
    else:
        run.last_run_at = now
    session.flush()
