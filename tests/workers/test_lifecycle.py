"""Job transitions of db/lifecycle.py on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from db import lifecycle
from db.models import InputStats, Job, JobStatus, Result
from db.session import get_sessionmaker, session_scope
from tests.workers.factories import make_job, make_station

STATS = {"mean": 0.5, "std": 0.1, "p10": 0.3, "p50": 0.5, "p90": 0.7}


def outcome(job_id: str) -> lifecycle.JobOutcome:
    return lifecycle.JobOutcome(
        job_id=job_id,
        probabilities={"crack": 0.9, "finger": 0.1},
        defects=["crack"],
        thresholds={"crack": 0.5, "finger": 0.5},
        stats=STATS,
        queue_wait_ms=12.0,
        inference_ms=3.0,
    )


def _jobs(url: str, n: int, **kwargs: object) -> list[str]:
    base = lifecycle.utcnow() - timedelta(seconds=100)
    with session_scope(url) as session:
        station = make_station(session)
        return [
            make_job(session, station=station, created_at=base + timedelta(seconds=i), **kwargs).id  # type: ignore[arg-type]
            for i in range(n)
        ]


def test_claim_takes_the_preferred_job_first_then_the_oldest(db_url: str) -> None:
    ids = _jobs(db_url, 5)
    with session_scope(db_url) as session:
        claimed = lifecycle.claim_jobs(session=session, limit=3, lease_s=60, prefer=ids[4])
    assert [job.id for job in claimed] == [ids[4], ids[0], ids[1]]
    assert all(job.image.startswith(b"\x89PNG") and job.attempts == 1 for job in claimed)
    with session_scope(db_url) as session:
        job = session.get(Job, ids[4])
        assert job is not None and job.status == JobStatus.running
        assert job.started_at is not None and job.lease_expires_at is not None
        assert lifecycle.as_utc(job.lease_expires_at) > lifecycle.as_utc(job.started_at)


def test_claim_never_hands_out_a_job_twice(db_url: str) -> None:
    ids = _jobs(db_url, 4)
    with session_scope(db_url) as session:
        first = lifecycle.claim_jobs(session=session, limit=3, lease_s=60, prefer=ids[3])
    with session_scope(db_url) as session:
        second = lifecycle.claim_jobs(session=session, limit=3, lease_s=60, prefer=ids[3])
    with session_scope(db_url) as session:
        third = lifecycle.claim_jobs(session=session, limit=3, lease_s=60)
    assert len(first) == 3 and len(second) == 1 and third == []
    assert {j.id for j in first} | {j.id for j in second} == set(ids)


def test_concurrent_claims_get_disjoint_jobs(db_url: str) -> None:
    ids = _jobs(db_url, 6)
    maker = get_sessionmaker(db_url)
    a, b = maker(), maker()
    try:
        got_a = lifecycle.claim_jobs(session=a, limit=3, lease_s=60)
        if db_url.startswith("sqlite"):
            a.commit()  # SQLite has one writer: the second claim waits for the first
        got_b = lifecycle.claim_jobs(session=b, limit=6, lease_s=60)
        a.commit()
        b.commit()
    finally:
        a.close()
        b.close()
    assert len(got_a) == 3 and len(got_b) == 3
    assert {j.id for j in got_a}.isdisjoint({j.id for j in got_b})
    assert {j.id for j in got_a} | {j.id for j in got_b} == set(ids)


def test_record_results_is_idempotent(db_url: str) -> None:
    ids = _jobs(db_url, 2)
    with session_scope(db_url) as session:
        lifecycle.claim_jobs(session=session, limit=2, lease_s=60)
    for _ in range(2):  # a redelivered message writes the same outcome again
        with session_scope(db_url) as session:
            written = lifecycle.record_results(
                session=session, outcomes=[outcome(ids[0])], model_name="m", model_version="1"
            )
        assert written in ([ids[0]], [])
    with session_scope(db_url) as session:
        assert session.scalar(select(func.count()).select_from(Result)) == 1
        assert session.scalar(select(func.count()).select_from(InputStats)) == 1
        job = session.get(Job, ids[0])
        assert job is not None and job.status == JobStatus.succeeded
        assert job.finished_at is not None and job.lease_expires_at is None
        result = session.get(Result, ids[0])
        assert result is not None and result.model_version == "1"
        assert result.defects == ["crack"] and result.probabilities["crack"] == 0.9
        stats = session.get(InputStats, ids[0])
        assert stats is not None and stats.p90 == 0.7


def test_failed_job_keeps_its_reason_and_gets_no_late_result(db_url: str) -> None:
    ids = _jobs(db_url, 1)
    with session_scope(db_url) as session:
        lifecycle.claim_jobs(session=session, limit=1, lease_s=60)
        assert lifecycle.fail_jobs(
            session=session, errors={ids[0]: ("corrupt_image", "the image data cannot be decoded")}
        ) == [ids[0]]
    with session_scope(db_url) as session:
        assert (
            lifecycle.record_results(
                session=session, outcomes=[outcome(ids[0])], model_name="m", model_version="1"
            )
            == []
        )
        assert lifecycle.fail_jobs(session=session, errors={ids[0]: ("other", "x")}) == []
    with session_scope(db_url) as session:
        job = session.get(Job, ids[0])
        assert job is not None and job.status == JobStatus.failed
        assert (job.error_code, job.error_message) == (
            "corrupt_image",
            "the image data cannot be decoded",
        )
        assert session.get(Result, ids[0]) is None


def test_release_gives_claimed_jobs_back(db_url: str) -> None:
    ids = _jobs(db_url, 2)
    with session_scope(db_url) as session:
        lifecycle.claim_jobs(session=session, limit=2, lease_s=60)
    with session_scope(db_url) as session:
        assert sorted(lifecycle.release_jobs(session=session, job_ids=ids)) == sorted(ids)
    with session_scope(db_url) as session:
        again = lifecycle.claim_jobs(session=session, limit=5, lease_s=60)
    assert sorted(j.id for j in again) == sorted(ids)


def test_a_late_release_does_not_undo_a_later_claim(db_url: str) -> None:
    (job_id,) = _jobs(db_url, 1)
    with session_scope(db_url) as session:
        (first,) = lifecycle.claim_jobs(session=session, limit=1, lease_s=60)
    with session_scope(db_url) as session:  # the sweep requeued it; another worker claims it
        lifecycle.release_jobs(session=session, job_ids=[job_id])
        (second,) = lifecycle.claim_jobs(
            session=session, limit=1, lease_s=60, now=first.started_at + timedelta(seconds=1)
        )
    with session_scope(db_url) as session:
        late = lifecycle.release_jobs(
            session=session, job_ids=[job_id], started_at=first.started_at
        )
        assert late == []
        current = lifecycle.release_jobs(
            session=session, job_ids=[job_id], started_at=second.started_at
        )
        assert current == [job_id]


def test_sweep_resends_stale_requeues_expired_and_fails_exhausted(db_url: str) -> None:
    now = lifecycle.utcnow()
    old, past, future = (
        now - timedelta(seconds=120),
        now - timedelta(seconds=1),
        now + timedelta(seconds=60),
    )
    with session_scope(db_url) as session:
        station = make_station(session)
        stale = make_job(session, station=station, enqueued_at=old).id
        fresh = make_job(session, station=station, enqueued_at=now).id
        expired = make_job(
            session, station=station, status=JobStatus.running, lease_expires_at=past, attempts=1
        ).id
        exhausted = make_job(
            session, station=station, status=JobStatus.running, lease_expires_at=past, attempts=3
        ).id
        leased = make_job(
            session, station=station, status=JobStatus.running, lease_expires_at=future, attempts=1
        ).id
        done = make_job(session, station=station, status=JobStatus.succeeded, enqueued_at=old).id
    with session_scope(db_url) as session:
        report = lifecycle.sweep(session=session, requeue_after_s=60, max_attempts=3, now=now)
    assert report.requeued_stale == [stale]
    assert report.requeued_expired == [expired]
    assert report.failed == [exhausted]
    assert sorted(report.to_enqueue) == sorted([stale, expired])
    with session_scope(db_url) as session:
        status = {j.id: j for j in session.scalars(select(Job))}
        assert status[stale].status == JobStatus.queued
        assert lifecycle.as_utc(status[stale].enqueued_at) >= now - timedelta(seconds=1)
        assert status[fresh].status == JobStatus.queued
        assert status[expired].status == JobStatus.queued
        assert status[expired].lease_expires_at is None
        assert status[exhausted].status == JobStatus.failed
        assert status[exhausted].error_code == lifecycle.WORKER_LOST
        assert status[leased].status == JobStatus.running
        assert status[done].status == JobStatus.succeeded
    with session_scope(db_url) as session:  # a second sweep right after finds nothing
        again = lifecycle.sweep(session=session, requeue_after_s=60, max_attempts=3, now=now)
    assert again.to_enqueue == [] and again.failed == []


def test_a_job_whose_worker_died_is_claimed_alone_ahead_of_fresh_ones(db_url: str) -> None:
    """It may be what killed the worker: it must not take a batch down with it again."""
    fresh = _jobs(db_url, 3)
    (retried,) = _jobs(db_url, 1, attempts=1)  # requeued by the sweep after its lease
    claims = []
    with session_scope(db_url) as session:
        for _ in range(3):
            claimed = lifecycle.claim_jobs(session=session, limit=16, lease_s=60, prefer=fresh[1])
            claims.append([(job.id, job.attempts) for job in claimed])
    assert claims == [[(retried, 2)], [(fresh[1], 1), (fresh[0], 1), (fresh[2], 1)], []]


def test_a_hand_back_is_not_a_try(db_url: str) -> None:
    """Jobs handed back (a database error, a worker stopping) keep their count and their batch."""
    ids = _jobs(db_url, 2)
    with session_scope(db_url) as session:
        lifecycle.claim_jobs(session=session, limit=2, lease_s=60)
        lifecycle.release_jobs(session=session, job_ids=ids)
    with session_scope(db_url) as session:
        again = lifecycle.claim_jobs(session=session, limit=5, lease_s=60)
    assert sorted((j.id, j.attempts) for j in again) == sorted((i, 1) for i in ids)
