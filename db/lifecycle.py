"""Worker-side job transitions: claim, record, fail, release, sweep; task-run marks.

The database is the truth about every job; broker messages only wake workers up. Each
function here is one state transition, written as conditional UPDATEs so that it is safe
under concurrency on PostgreSQL (row locks, `FOR UPDATE SKIP LOCKED`) and on SQLite (one
writer at a time, `WHERE status = ...` plus the returned rows decide who won):

    queued --claim_jobs--> running --record_results--> succeeded
                              |  \\--fail_jobs--------> failed   (bad image: at once)
                              |--release_jobs-------> queued   (transient error)
    running past its lease --sweep--> queued, or failed/worker_lost after max_attempts
    queued for too long -----sweep--> queued (enqueued_at bumped; the caller re-sends)
    queued past a limit while no worker serves a model --fail_unserved--> failed/model_unavailable

Callers own the session and commit; every function flushes its changes and returns plain
values. db imports nothing of ours, so timings and model names come in as arguments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import Insert, case, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased

from db.models import InputStats, Job, JobImage, JobStatus, Result, as_utc

WORKER_LOST = "worker_lost"
MODEL_UNAVAILABLE = "model_unavailable"
_OPEN = (JobStatus.queued, JobStatus.running)
_NO_ERROR = {"error_code": None, "error_message": None}
# PostgreSQL channel on which ended jobs are announced (gateway/waiting.py listens), ids
# comma-separated; a payload must stay under 8000 bytes (36-character ids).
JOB_ENDED_CHANNEL = "eldefect_job_ended"
NOTIFY_IDS_PER_MESSAGE = 200


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ClaimedJob:
    """A job this worker now holds, with what it needs to run it."""

    id: str
    image: bytes
    created_at: datetime
    started_at: datetime
    attempts: int

    @property
    def tried_before(self) -> bool:
        """Claimed before this claim (its worker died): such a job runs alone (claim_jobs)."""
        return self.attempts > 1


@dataclass(frozen=True)
class JobOutcome:
    """What a worker found for one job, ready to be stored by `record_results`."""

    job_id: str
    probabilities: Mapping[str, float]
    defects: Sequence[str]
    thresholds: Mapping[str, float]
    stats: Mapping[str, float]
    queue_wait_ms: float
    inference_ms: float


@dataclass
class SweepReport:
    requeued_stale: list[str] = field(default_factory=list)  # queued too long: re-send
    requeued_expired: list[str] = field(default_factory=list)  # running past lease: re-send
    failed: list[str] = field(default_factory=list)  # running past lease, out of attempts
    unserved: list[str] = field(default_factory=list)  # failed: no worker serves a model

    @property
    def to_enqueue(self) -> list[str]:
        return self.requeued_stale + self.requeued_expired


def claim_jobs(
    *,
    session: Session,
    limit: int,
    lease_s: float,
    prefer: str | None = None,
    fresh_only: bool = False,
    now: datetime | None = None,
) -> list[ClaimedJob]:
    """Move up to `limit` queued jobs to running for this worker, `prefer` first, then oldest.

    A job tried before (requeued by `sweep` after its worker died) is claimed alone and
    ahead of fresh jobs: if it is what kills workers (an image that exhausts memory or
    crashes a decoder), it takes no other job down with it the next time, and fails alone
    once its attempts run out. So a claim is one statement, or two when the first finds no
    job tried before. `fresh_only` (filling up a batch already claimed) takes only jobs
    never tried.

    Each statement is an UPDATE that picks its rows by a subquery and returns each claimed
    job with its image; in an autocommit session (as the worker claims) it is committed as
    it returns. PostgreSQL: the candidate rows are locked with SKIP LOCKED, so concurrent
    workers pick disjoint sets without waiting. SQLite: the conditional UPDATE (`status =
    'queued'`) with RETURNING decides; a job another worker took in between is not returned.
    """
    if limit <= 0:
        return []
    claim = partial(_claim, session, lease_s=lease_s, prefer=prefer, now=now or utcnow())
    retried = [] if fresh_only else claim(tried_before=True, limit=1)
    return retried or claim(tried_before=False, limit=limit)


def _claim(
    session: Session,
    *,
    tried_before: bool,
    limit: int,
    lease_s: float,
    prefer: str | None,
    now: datetime,
) -> list[ClaimedJob]:
    """One claiming UPDATE over the queued jobs claimed before (or never claimed)."""
    queued = aliased(Job)  # the candidates' own FROM, never correlated with the UPDATE's
    candidates = (
        select(queued.id)
        .where(
            queued.status == JobStatus.queued,
            queued.attempts > 0 if tried_before else queued.attempts == 0,
        )
        .order_by(case((queued.id == prefer, 0), else_=1), queued.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)  # ignored on SQLite
    )
    # Computed once: PostgreSQL may rescan a plain subquery for each row the UPDATE visits,
    # and every rescan skips the rows this statement has already locked, taking the next.
    picked = candidates.cte("picked").prefix_with("MATERIALIZED")
    image = select(JobImage.data).where(JobImage.job_id == Job.id).scalar_subquery()
    claimed = session.execute(
        update(Job)
        .where(Job.id.in_(select(picked.c.id)), Job.status == JobStatus.queued)
        .values(
            status=JobStatus.running,
            started_at=now,
            lease_expires_at=now + timedelta(seconds=lease_s),
            attempts=Job.attempts + 1,
        )
        .returning(Job.id, Job.created_at, Job.attempts, image)
        .execution_options(synchronize_session=False)
    ).all()
    jobs = [
        ClaimedJob(
            id=job_id,
            image=data or b"",
            created_at=as_utc(created_at),
            started_at=now,
            attempts=attempts,
        )
        for job_id, created_at, attempts, data in claimed
    ]
    # RETURNING has no order: the candidates' order again.
    return sorted(jobs, key=lambda job: (job.id != prefer, job.created_at))


def _finish(session: Session, job_id: str, values: dict[str, Any]) -> bool:
    """Close one open job; False when it is already closed (a redelivery, or the sweep won)."""
    closed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(_OPEN))
        .values(lease_expires_at=None, **values)
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    ).first()
    return closed is not None


def _finish_many(session: Session, job_ids: Sequence[str], values: dict[str, Any]) -> set[str]:
    """Close the open jobs among `job_ids` in one UPDATE; returns the ids it closed."""
    if not job_ids:
        return set()
    closed = session.execute(
        update(Job)
        .where(Job.id.in_(list(job_ids)), Job.status.in_(_OPEN))
        .values(lease_expires_at=None, **values)
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    ).scalars()
    return set(closed)


def _notify_ended(session: Session, job_ids: Sequence[str]) -> None:
    """PostgreSQL: tell listeners (the gateway's long-polls) which jobs ended.

    NOTIFY is transactional: it is delivered when, and only if, this transaction commits, so
    a listener never reads a job that has not ended yet. A listener that misses it (it was
    reconnecting) still finds the job on its next poll; SQLite has no NOTIFY, only the poll.
    """
    if not job_ids or session.get_bind().dialect.name != "postgresql":
        return
    for i in range(0, len(job_ids), NOTIFY_IDS_PER_MESSAGE):
        payload = ",".join(job_ids[i : i + NOTIFY_IDS_PER_MESSAGE])
        session.execute(select(func.pg_notify(JOB_ENDED_CHANNEL, payload)))


def record_results(
    *,
    session: Session,
    outcomes: Sequence[JobOutcome],
    model_name: str,
    model_version: str,
    now: datetime | None = None,
) -> list[str]:
    """Store result and input statistics and mark each job succeeded; returns the ids written.

    Idempotent: a job that is no longer queued/running (it already has its result, or it
    failed) is skipped, and the job rows' conditional UPDATE comes first, so it is also the
    lock that keeps two concurrent writers from both adding a result (the result's primary
    key is the job id as a last line of defence). A row that is there already (a result
    edited in by hand, statistics left by an old version) is kept, not overwritten. A whole
    batch costs a fixed number of statements (one UPDATE, two multi-row INSERTs and the
    notification), not a few per job.
    """
    now = now or utcnow()
    values = {"status": JobStatus.succeeded, "finished_at": now}
    closed = _finish_many(session, [o.job_id for o in outcomes], values | _NO_ERROR)
    written = [o for o in outcomes if o.job_id in closed]
    if not written:
        return []
    inserted = set(
        session.scalars(
            _insert_new(session, Result).returning(Result.job_id),
            [
                {
                    "job_id": o.job_id,
                    "model_name": model_name,
                    "model_version": str(model_version),
                    "probabilities": {k: float(v) for k, v in o.probabilities.items()},
                    "defects": list(o.defects),
                    "thresholds": {k: float(v) for k, v in o.thresholds.items()},
                    "inference_ms": float(o.inference_ms),
                    "queue_wait_ms": float(o.queue_wait_ms),
                    "created_at": now,
                }
                for o in written
            ],
        )
    )
    written = [o for o in written if o.job_id in inserted]
    if written:
        session.execute(
            _insert_new(session, InputStats),
            [
                # Every statistic the table has a column for; db knows no feature list.
                {"job_id": o.job_id, "created_at": now}
                | {k: float(v) for k, v in o.stats.items() if k in InputStats.__table__.columns}
                for o in written
            ],
        )
    ids = [o.job_id for o in written]
    _notify_ended(session, ids)
    session.flush()
    return ids


def _insert_new(session: Session, model: type[Result] | type[InputStats]) -> Insert:
    """INSERT that skips rows whose job already has one (ON CONFLICT (job_id) DO NOTHING),
    in the dialect's own construct (PostgreSQL and SQLite spell it alike)."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(model).on_conflict_do_nothing(index_elements=["job_id"])
    return sqlite.insert(model).on_conflict_do_nothing(index_elements=["job_id"])


def fail_jobs(
    *,
    session: Session,
    errors: Mapping[str, tuple[str, str]],
    now: datetime | None = None,
) -> list[str]:
    """Mark jobs failed with `{job_id: (code, message)}`; already-closed jobs are left alone."""
    now = now or utcnow()
    failed = []
    for job_id, (code, message) in errors.items():
        values = {
            "status": JobStatus.failed,
            "finished_at": now,
            "error_code": code,
            "error_message": message,
        }
        if _finish(session, job_id, values):
            failed.append(job_id)
    _notify_ended(session, failed)
    session.flush()
    return failed


def release_jobs(
    *,
    session: Session,
    job_ids: Sequence[str],
    started_at: datetime | None = None,
    now: datetime | None = None,
) -> list[str]:
    """Give running jobs back to the queue (the batch hit a transient error, or the worker
    is stopping). A hand-back is not a try: the claim's count is undone, so the job keeps
    its place among fresh jobs and `worker_lost` still means what it says.

    With `started_at` (the time of the claim being handed back) only that claim is undone: a
    release that comes late, after the sweep requeued the job and another worker claimed it,
    must not take the job from under that worker.
    """
    if not job_ids:
        return []
    mine = () if started_at is None else (Job.started_at == started_at,)
    rows = session.execute(
        update(Job)
        .where(Job.id.in_(list(job_ids)), Job.status == JobStatus.running, *mine)
        .values(
            status=JobStatus.queued,
            started_at=None,
            lease_expires_at=None,
            enqueued_at=now or utcnow(),
            attempts=Job.attempts - 1,
        )
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    ).all()
    return [row.id for row in rows]


def sweep(
    *,
    session: Session,
    requeue_after_s: float,
    max_attempts: int,
    now: datetime | None = None,
    limit: int = 1000,
) -> SweepReport:
    """Find jobs the broker or a dead worker lost, and put them back on track.

    - queued with `enqueued_at` older than `requeue_after_s`: `enqueued_at` is bumped and the
      caller re-sends a message (the broker may have dropped the first one);
    - running past `lease_expires_at` (its worker died): back to queued for another try, or
      `failed` with code `worker_lost` once it has been tried `max_attempts` times.
    """
    now = now or utcnow()
    report = SweepReport()

    def _ids(*conditions: Any) -> list[str]:
        query = select(Job.id).where(*conditions).order_by(Job.created_at).limit(limit)
        return list(session.scalars(query.with_for_update(skip_locked=True)))

    stale = _ids(
        Job.status == JobStatus.queued,
        Job.enqueued_at < now - timedelta(seconds=requeue_after_s),
    )
    if stale:
        report.requeued_stale = [
            row.id
            for row in session.execute(
                update(Job)
                .where(Job.id.in_(stale), Job.status == JobStatus.queued)
                .values(enqueued_at=now)
                .returning(Job.id)
                .execution_options(synchronize_session=False)
            )
        ]

    expired = Job.status == JobStatus.running, Job.lease_expires_at < now
    retry = _ids(*expired, Job.attempts < max_attempts)
    if retry:
        report.requeued_expired = [
            row.id
            for row in session.execute(
                update(Job)
                .where(Job.id.in_(retry), *expired)
                .values(
                    status=JobStatus.queued,
                    enqueued_at=now,
                    started_at=None,
                    lease_expires_at=None,
                )
                .returning(Job.id)
                .execution_options(synchronize_session=False)
            )
        ]
    give_up = _ids(*expired, Job.attempts >= max_attempts)
    if give_up:
        message = f"the worker running this job stopped {max_attempts} times before finishing it"
        report.failed = fail_jobs(
            session=session,
            errors={job_id: (WORKER_LOST, message) for job_id in give_up},
            now=now,
        )
    session.flush()
    return report


def fail_unserved(
    *,
    session: Session,
    older_than_s: float,
    message: str,
    now: datetime | None = None,
    limit: int = 1000,
) -> list[str]:
    """Fail jobs queued since more than `older_than_s` with code `model_unavailable`.

    The caller decides that no worker can serve them (no live worker has a model loaded);
    this only picks the old ones, oldest first, skipping rows another transaction holds.
    """
    now = now or utcnow()
    ids = list(
        session.scalars(
            select(Job.id)
            .where(
                Job.status == JobStatus.queued,
                Job.created_at < now - timedelta(seconds=older_than_s),
            )
            .order_by(Job.created_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    if not ids:
        return []
    rows = session.execute(
        update(Job)
        .where(Job.id.in_(ids), Job.status == JobStatus.queued)  # a job claimed since stays
        .values(
            status=JobStatus.failed,
            finished_at=now,
            lease_expires_at=None,
            error_code=MODEL_UNAVAILABLE,
            error_message=message,
        )
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    ).all()
    return [row.id for row in rows]
