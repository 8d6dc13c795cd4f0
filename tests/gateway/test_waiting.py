"""Long-polls wake on PostgreSQL's NOTIFY from the worker's transaction, not on the poll."""

from __future__ import annotations

import asyncio

import pytest

from db.migrate import upgrade
from db.session import get_sessionmaker
from gateway.waiting import JobWatcher, listen_conninfo
from tests.workers.test_inference import FakeModel, png_bytes, queued_jobs, settings_for
from workers.inference import process_batch

# The poll would first look after an hour: only a notification can end these waits in time.
NO_POLL_S = 3600.0


def _watcher(url: str) -> JobWatcher:
    return JobWatcher(
        lambda: get_sessionmaker(url)(), interval_s=NO_POLL_S, listen=listen_conninfo(url)
    )


async def _wait_while(watcher: JobWatcher, job_id: str, work: object, timeout_s: float) -> bool:
    waiting = asyncio.create_task(watcher.wait(job_id, timeout_s))
    await asyncio.sleep(0)  # the waiter registers and starts the listener
    assert await asyncio.to_thread(watcher.wait_listening, 30.0), "listener never connected"
    await asyncio.to_thread(work)  # type: ignore[arg-type]
    try:
        return await waiting
    finally:
        await watcher.stop()


@pytest.mark.postgres
@pytest.mark.parametrize("image", ["good", "corrupt"])
def test_the_batch_that_ends_a_job_wakes_its_long_poll(postgres_url: str, image: str) -> None:
    upgrade(postgres_url)
    data = png_bytes(0) if image == "good" else png_bytes(1)[:60]
    (job_id,) = queued_jobs(postgres_url, [data])

    def run_batch() -> None:
        report = process_batch(settings=settings_for(postgres_url), model_source=FakeModel)
        assert report.claimed == [job_id]

    assert asyncio.run(_wait_while(_watcher(postgres_url), job_id, run_batch, 20.0))


@pytest.mark.postgres
def test_a_notification_is_sent_only_when_the_transaction_commits(postgres_url: str) -> None:
    from db import lifecycle

    upgrade(postgres_url)
    (job_id,) = queued_jobs(postgres_url, [png_bytes(0)])

    def end_then_roll_back() -> None:
        with get_sessionmaker(postgres_url)() as session:
            lifecycle.fail_jobs(session=session, errors={job_id: ("corrupt_image", "test")})
            session.rollback()

    assert not asyncio.run(_wait_while(_watcher(postgres_url), job_id, end_then_roll_back, 2.0))


def test_sqlite_has_no_listener_and_relies_on_the_poll() -> None:
    assert listen_conninfo("sqlite:///var/eldefect.db") is None
    conninfo = listen_conninfo("postgresql+psycopg://u:secret@db:5432/eldefect")
    assert conninfo == "postgresql://u:secret@db:5432/eldefect"
