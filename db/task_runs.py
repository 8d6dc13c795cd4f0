"""When each periodic task last ran (task_runs): written by the task, read by the exporter."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from db.models import TaskRun, utcnow


def record_task_run(*, session: Session, name: str, now: datetime | None = None) -> None:
    """Note that the periodic task `name` ran now (one row per task, upserted).

    One statement (INSERT ... ON CONFLICT DO UPDATE, on PostgreSQL and SQLite alike), so two
    runs at once cannot both insert the row.
    """
    dialect = session.get_bind().dialect.name
    insert_into = postgresql_insert if dialect == "postgresql" else sqlite_insert
    statement = insert_into(TaskRun).values(name=name, last_run_at=now or utcnow())
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[TaskRun.name],
            set_={"last_run_at": statement.excluded.last_run_at},
        )
    )
    session.flush()
