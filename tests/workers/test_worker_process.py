"""A real `eldefect worker` process on the embedded broker and on Redis + PostgreSQL.

Jobs are written straight into the database and announced with `send_task` by name, exactly
as the gateway does, so these tests pin down the worker side alone (the HTTP path is in
test_up.py).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from db import lifecycle
from db.migrate import upgrade
from db.models import Job, JobStatus, Result
from db.session import session_scope
from eldefect.settings import get_settings
from eldefect.wakeups import RedisMarker, coalesces, marker_key
from tests.workers.conftest import TinyRegistry
from tests.workers.factories import make_job, make_station, png_bytes
from tests.workers.harness import (
    Proc,
    result_count,
    start_worker,
    statuses,
    wait_all_finished,
    wait_until,
)

pytestmark = pytest.mark.slow


def _use(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    settings = get_settings()
    upgrade(settings.database_url)
    return settings.database_url


def submit(url: str, images: list[bytes], *, send: bool = True, messages: int = 0) -> list[str]:
    """Store jobs as the gateway would, then send one wake-up message per job (or only the
    first `messages`)."""
    with session_scope(url) as session:
        station = make_station(session)
        ids = [make_job(session, station=station, data=data).id for data in images]
    if send:
        send_wake_ups(ids[: messages or None])
    return ids


def send_wake_ups(job_ids: list[str]) -> None:
    from workers.app import create_app

    client = create_app()
    try:
        for job_id in job_ids:
            client.send_task("eldefect.infer", args=[job_id], queue="inference.cpu")
    finally:
        client.close()


@pytest.fixture(
    params=["embedded", pytest.param("services", marks=[pytest.mark.postgres, pytest.mark.redis])]
)
def backend(
    request: pytest.FixtureRequest, served_model: TinyRegistry, monkeypatch: pytest.MonkeyPatch
) -> str:
    """The database URL, after pointing settings at SQLite + files or PostgreSQL + Redis."""
    if request.param == "embedded":
        return _use(monkeypatch)
    return _use(
        monkeypatch,
        ELDEFECT_DATABASE_URL=request.getfixturevalue("postgres_url"),
        ELDEFECT_BROKER_URL=request.getfixturevalue("redis_url"),
    )


def test_worker_batches_jobs_and_fails_a_corrupt_image_with_its_reason(
    backend: str, tmp_path: Path
) -> None:
    url = backend
    worker = start_worker(tmp_path)
    try:
        good = submit(url, [png_bytes(i) for i in range(30)])
        corrupt = submit(url, [png_bytes(99)[:70]])  # the header passes, the pixel data does not
        final = wait_all_finished(url, good + corrupt, 90, worker.text, [worker])
    finally:
        worker.stop()
    assert {final[i] for i in good} == {JobStatus.succeeded}
    assert final[corrupt[0]] == JobStatus.failed
    with session_scope(url) as session:
        job = session.get(Job, corrupt[0])
        assert job is not None and job.error_code == "corrupt_image" and job.error_message
        results = list(session.scalars(select(Result)))
        assert len(results) == 30 and {r.model_version for r in results} == {"1"}
        assert all(r.model_name == "el_defect_classifier" for r in results)
        # Batching: jobs that shared a forward pass share its duration.
        assert max(Counter(r.inference_ms for r in results).values()) > 1


def test_one_wake_up_message_drains_every_queued_job(backend: str, tmp_path: Path) -> None:
    url = backend
    broker = get_settings().broker_url
    if coalesces(get_settings()):  # as the gateway does; a long TTL, so only a worker clears it
        assert RedisMarker(broker, ttl_s=600).mark("inference.cpu")
    worker = start_worker(tmp_path)
    try:
        ids = submit(url, [png_bytes(i) for i in range(40)], messages=1)  # 16 per batch
        final = wait_all_finished(url, ids, 60, worker.text, [worker])
    finally:
        worker.stop()
    assert set(final.values()) == {JobStatus.succeeded}
    assert result_count(url) == 40
    if coalesces(get_settings()):
        import redis

        assert not redis.Redis.from_url(broker).exists(marker_key("inference.cpu"))


@pytest.mark.redis
@pytest.mark.postgres
def test_sweep_recovers_jobs_whose_messages_redis_lost(
    served_model: TinyRegistry,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    postgres_url: str,
    redis_url: str,
) -> None:
    import redis

    url = _use(
        monkeypatch,
        ELDEFECT_DATABASE_URL=postgres_url,
        ELDEFECT_BROKER_URL=redis_url,
        ELDEFECT_REQUEUE_AFTER_S="1",
        ELDEFECT_SWEEP_INTERVAL_S="1",
    )
    ids = submit(url, [png_bytes(i) for i in range(40)])
    client = redis.Redis.from_url(redis_url)
    assert client.llen("inference.cpu") == 40
    client.flushdb()  # the broker loses every queued message
    client.close()
    beat = Proc(["beat"], tmp_path / "beat.log")
    worker = start_worker(tmp_path)
    try:
        final = wait_all_finished(url, ids, 90, lambda: worker.text() + beat.text(), [worker, beat])
    finally:
        worker.stop()
        beat.stop()
    assert set(final.values()) == {JobStatus.succeeded}
    assert result_count(url) == 40


def test_the_training_worker_sweeps_too_and_ends_jobs_no_worker_can_serve(
    settings_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Compose starts the training worker with --no-maintenance (no maintenance queue). With
    every inference worker down, its sweep is what ends their queued jobs."""
    url = _use(
        monkeypatch, ELDEFECT_SWEEP_INTERVAL_S="1", ELDEFECT_MODEL_UNAVAILABLE_FAIL_AFTER_S="1"
    )
    ids = submit(url, [png_bytes(0)], send=False)
    worker = Proc(
        ["worker", "--queue", "training", "--no-maintenance", "--name", "training.1@test"],
        tmp_path / "training.log",
    )
    try:
        worker.wait_for(" ready.")
        final = wait_all_finished(url, ids, 60, worker.text, [worker])
    finally:
        worker.stop()
    assert final[ids[0]] == JobStatus.failed
    with session_scope(url) as session:
        job = session.get(Job, ids[0])
        assert job is not None and job.error_code == "model_unavailable"
        assert (job.error_message or "").endswith("no inference worker is running")


def test_worker_killed_mid_batch_leaves_no_job_behind_and_none_done_twice(
    backend: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = backend
    env = {
        # A batch waits up to 3 s to fill, so the kill lands while jobs are claimed.
        "ELDEFECT_BATCH_WAIT_MS": "3000",
        "ELDEFECT_RUNNING_TIMEOUT_S": "2",
        "ELDEFECT_REQUEUE_AFTER_S": "2",
        "ELDEFECT_SWEEP_INTERVAL_S": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    beat = Proc(["beat"], tmp_path / "beat.log")
    first = start_worker(tmp_path, "first")
    ids: list[str] = []
    try:
        ids += submit(url, [png_bytes(i) for i in range(5)])
        wait_until(
            lambda: JobStatus.running in statuses(url, ids).values(),
            30,
            "a claimed job",
            first.text,
        )
        ids += submit(url, [png_bytes(i) for i in range(5, 25)])
        first.kill()
        assert JobStatus.running in statuses(url, ids).values(), "killed in the middle of a batch"
        monkeypatch.setenv("ELDEFECT_BATCH_WAIT_MS", "20")
        second = start_worker(tmp_path, "second")
        try:
            final = wait_all_finished(
                url, ids, 90, lambda: second.text() + beat.text(), [second, beat]
            )
        finally:
            second.stop()
    finally:
        first.stop()
        beat.stop()
    assert set(final.values()) == {JobStatus.succeeded}
    assert result_count(url) == len(ids), "exactly one result per job"
    with session_scope(url) as session:
        attempts = {j.id: j.attempts for j in session.scalars(select(Job))}
    assert max(attempts.values()) >= 2, "the killed batch was claimed again"


def test_promotion_while_jobs_flow_switches_versions_without_a_failure(
    backend: str, served_model: TinyRegistry, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from eldefect.registry import promote

    url = backend
    # The periodic check is off (an hour): only the promotion event can cause the swap.
    monkeypatch.setenv("ELDEFECT_MODEL_CHECK_INTERVAL_S", "3600")
    get_settings.cache_clear()
    settings = get_settings()
    worker = start_worker(tmp_path)
    ids: list[str] = []
    try:
        for round_ in range(20):
            ids += submit(url, [png_bytes(round_ * 10 + i) for i in range(10)])
            if round_ == 8:
                decision = promote(
                    name=served_model.name,
                    version=served_model.versions[1],
                    to_production=True,
                    tracking_uri=settings.mlflow_tracking_uri,
                )
                assert "production" in decision.moved
            time.sleep(0.15)
        wait_until(
            lambda: "now serving" in worker.text(),
            60,
            "the swap to version 2",
            worker.text,
            [worker],
        )
        ids += submit(url, [png_bytes(1000 + i) for i in range(10)])
        final = wait_all_finished(url, ids, 120, worker.text, [worker])
    finally:
        worker.stop()
    assert len(ids) == 210 and set(final.values()) == {JobStatus.succeeded}
    with session_scope(url) as session:
        rows = session.execute(
            select(Result.model_version).order_by(Result.created_at, Result.job_id)
        ).all()
    versions = [v for (v,) in rows]
    assert versions[0] == "1" and versions[-1] == "2"
    switch = versions.index("2")
    assert set(versions[switch:]) == {"2"}, "once switched, no job is served by the old version"


@pytest.mark.redis
@pytest.mark.postgres
def test_a_killed_workers_leases_are_back_in_service_within_lease_plus_one_sweep(
    served_model: TinyRegistry,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    postgres_url: str,
    redis_url: str,
) -> None:
    """500 jobs queued, two workers, one SIGKILLed mid-batch, no beat: the survivor's own
    sweep thread requeues the dead one's jobs while its pool is busy with the backlog."""
    lease_s, sweep_s = 4.0, 1.0
    url = _use(
        monkeypatch,
        ELDEFECT_DATABASE_URL=postgres_url,
        ELDEFECT_BROKER_URL=redis_url,
        ELDEFECT_RUNNING_TIMEOUT_S=str(lease_s),
        ELDEFECT_SWEEP_INTERVAL_S=str(sweep_s),
        ELDEFECT_HEARTBEAT_INTERVAL_S="1",
        ELDEFECT_REQUEUE_AFTER_S="600",  # only the lease matters here
    )
    # The victim takes big batches, so that more jobs are running than the survivor holds.
    victim = start_worker(tmp_path, "victim", ELDEFECT_BATCH_SIZE="64")
    survivor = start_worker(tmp_path, "survivor", ELDEFECT_BATCH_SIZE="16")
    try:
        ids = submit(url, [png_bytes(i) for i in range(500)], send=False)
        # The wake-ups go out while this thread watches: the two workers drain the backlog in
        # about a second, so a watch that began only after the 500th message (slow on a busy
        # machine) could find it gone.
        sender = threading.Thread(target=send_wake_ups, args=(ids,))
        sender.start()
        # More running jobs than the survivor can hold means the victim is mid-batch. It is
        # frozen before it is counted, so that it cannot finish the batch between count and kill.
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, "never saw the victim holding a batch"
            if _running(url) > 16:
                victim.pause()
                leased = [job_id for job_id, _ in _running_since(url, lifecycle.utcnow())]
                if len(leased) > 16:
                    break
                victim.resume()
            time.sleep(0.005)
        victim.kill()
        killed_at, killed_mono = lifecycle.utcnow(), time.monotonic()
        sender.join()

        def back_in_service() -> bool:  # finished, queued again, or claimed again since
            return all(started is None or started > killed_at for _, started in _open(url, leased))

        wait_until(back_in_service, lease_s + sweep_s + 20, "the victim's jobs", survivor.text)
        recovered_s = time.monotonic() - killed_mono
        final = wait_all_finished(url, ids, 300, survivor.text, [survivor])
    finally:
        victim.stop()
        survivor.stop()
    print(f"{len(leased)} leased jobs back in service {recovered_s:.1f} s after the kill")
    assert recovered_s <= lease_s + sweep_s + 1.5, f"took {recovered_s:.1f} s"
    assert set(final.values()) == {JobStatus.succeeded}
    assert result_count(url) == 500


def _running(url: str) -> int:
    with session_scope(url) as session:
        return len(list(session.scalars(select(Job.id).where(Job.status == JobStatus.running))))


def _running_since(url: str, before: datetime) -> list[tuple[str, datetime]]:
    with session_scope(url) as session:
        rows = session.execute(
            select(Job.id, Job.started_at).where(
                Job.status == JobStatus.running, Job.started_at <= before
            )
        ).all()
    return [(job_id, lifecycle.as_utc(started)) for job_id, started in rows if started is not None]


def _open(url: str, ids: list[str]) -> list[tuple[str, datetime | None]]:
    """The jobs among `ids` still running, with when their current claim started."""
    with session_scope(url) as session:
        rows = session.execute(
            select(Job.id, Job.started_at).where(Job.id.in_(ids), Job.status == JobStatus.running)
        ).all()
    return [(job_id, lifecycle.as_utc(s) if s else None) for job_id, s in rows]
