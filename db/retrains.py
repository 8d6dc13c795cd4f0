"""Retrain triggers: open one (at most one at a time), run it under a lease, close it.

    (none) --open_trigger--> queued --start_trigger--> running --finish_trigger--> succeeded
                               |                          |--fail_trigger------> failed
                               |                          |--expire_triggers (lease out)--> failed
                               |--fail_trigger--> failed
                               |--expire_queued (no training worker took it in time)--> failed

"At most one open trigger" is the database's rule, not a Python flag: an open trigger holds
`open_slot = 1` and the column is unique, so when two beat ticks (or a tick and an operator)
race, the second INSERT fails and `open_trigger` returns None. Every transition is a
conditional UPDATE; the returned row count says who won. Callers own the session;
`open_trigger` commits (an opened trigger is a promise the training worker will see).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import DriftReport, DriftVerdict, RetrainTrigger, TriggerStatus, as_utc, utcnow

REASONS = ("drift", "reviews", "schedule", "manual")
# How a closed trigger ended: `decision` for a gated model, else failed.
OUTCOMES = ("promoted", "staged", "rejected", "failed")
WORKER_LOST = "worker_lost: the training worker stopped renewing its lease (crash or kill)"
_OPEN = (TriggerStatus.queued, TriggerStatus.running)


def open_trigger(
    *,
    session: Session,
    reason: str,
    requested_by: str,
    inputs: dict[str, Any] | None = None,
    note: str | None = None,
) -> RetrainTrigger | None:
    """Record a new queued trigger and commit; None when another one is open already."""
    if reason not in REASONS:
        raise ValueError(f"unknown retrain reason {reason!r}; one of {REASONS}")
    trigger = RetrainTrigger(
        reason=reason,
        status=TriggerStatus.queued,
        open_slot=1,
        requested_by=requested_by,
        note=note,
        inputs=inputs or {},
        created_at=utcnow(),
    )
    session.add(trigger)
    try:
        session.commit()
    except IntegrityError:  # the unique open_slot: someone else's trigger is open
        session.rollback()
        return None
    return trigger


def get_open_trigger(*, session: Session) -> RetrainTrigger | None:
    return session.scalars(
        select(RetrainTrigger).where(RetrainTrigger.open_slot.is_not(None))
    ).one_or_none()


def get_trigger(*, session: Session, trigger_id: int) -> RetrainTrigger | None:
    return session.get(RetrainTrigger, trigger_id, populate_existing=True)


def list_triggers(*, session: Session, limit: int = 50) -> list[RetrainTrigger]:
    """Newest first."""
    query = select(RetrainTrigger).order_by(RetrainTrigger.id.desc()).limit(limit)
    return list(session.scalars(query))


def last_trigger(*, session: Session) -> RetrainTrigger | None:
    return session.scalars(
        select(RetrainTrigger).order_by(RetrainTrigger.id.desc()).limit(1)
    ).one_or_none()


def last_closed_at(*, session: Session) -> datetime | None:
    """When the latest closed trigger ended (the cooldown counts from it)."""
    return session.scalar(
        select(func.max(RetrainTrigger.finished_at)).where(RetrainTrigger.open_slot.is_(None))
    )


def trigger_for_version(
    *, session: Session, model_name: str, version: str
) -> RetrainTrigger | None:
    """The succeeded trigger that registered this model version, if one did."""
    return session.scalars(
        select(RetrainTrigger).where(
            RetrainTrigger.model_name == model_name,
            RetrainTrigger.model_version == version,
            RetrainTrigger.status == TriggerStatus.succeeded,
        )
    ).first()


def start_trigger(*, session: Session, trigger_id: int, worker: str, lease_s: float) -> bool:
    """queued -> running for this worker; False when it is not queued (taken, closed)."""
    now = utcnow()
    result = session.execute(
        update(RetrainTrigger)
        .where(RetrainTrigger.id == trigger_id, RetrainTrigger.status == TriggerStatus.queued)
        .values(
            status=TriggerStatus.running,
            started_at=now,
            worker=worker,
            lease_expires_at=now + timedelta(seconds=lease_s),
        )
    )
    session.flush()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def renew_lease(*, session: Session, trigger_id: int, lease_s: float) -> bool:
    """Extend a running trigger's lease; False when it is no longer running (the sweep
    failed it, for example after the worker was suspended longer than the lease)."""
    result = session.execute(
        update(RetrainTrigger)
        .where(RetrainTrigger.id == trigger_id, RetrainTrigger.status == TriggerStatus.running)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
    )
    session.flush()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def record_progress(*, session: Session, trigger_id: int, **values: Any) -> None:
    """Store what is known so far (run id, registered version, data cut-off) on a running
    trigger, so a crash later still leaves the record of how far it got."""
    allowed = {"run_id", "model_name", "model_version", "data_until", "n_train_reviews"}
    unknown = set(values) - allowed
    if unknown:
        raise ValueError(f"record_progress takes {sorted(allowed)}, not {sorted(unknown)}")
    session.execute(
        update(RetrainTrigger)
        .where(RetrainTrigger.id == trigger_id, RetrainTrigger.status == TriggerStatus.running)
        .values(**values)
    )
    session.flush()


def finish_trigger(
    *,
    session: Session,
    trigger_id: int,
    decision: str,
    gate: dict[str, Any],
    champion_version: str | None,
) -> bool:
    """running -> succeeded with the gate's decision; frees the open slot."""
    if decision not in OUTCOMES[:3]:
        raise ValueError(f"decision must be one of {OUTCOMES[:3]}, not {decision!r}")
    result = session.execute(
        update(RetrainTrigger)
        .where(RetrainTrigger.id == trigger_id, RetrainTrigger.status == TriggerStatus.running)
        .values(
            status=TriggerStatus.succeeded,
            decision=decision,
            gate=gate,
            champion_version=champion_version,
            open_slot=None,
            lease_expires_at=None,
            finished_at=utcnow(),
        )
    )
    session.flush()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def fail_trigger(*, session: Session, trigger_id: int, error: str) -> bool:
    """An open trigger -> failed with the reason; frees the open slot."""
    result = session.execute(
        update(RetrainTrigger)
        .where(RetrainTrigger.id == trigger_id, RetrainTrigger.status.in_(_OPEN))
        .values(
            status=TriggerStatus.failed,
            error=error[:4000],
            open_slot=None,
            lease_expires_at=None,
            finished_at=utcnow(),
        )
    )
    session.flush()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def expire_triggers(*, session: Session, now: datetime | None = None) -> list[int]:
    """Fail running triggers whose lease ran out (their worker died); returns their ids."""
    now = now or utcnow()
    # A worker renewing at this very moment keeps its trigger.
    return _fail_each_where(
        session,
        RetrainTrigger.status == TriggerStatus.running,
        RetrainTrigger.lease_expires_at < now,
        error=WORKER_LOST,
        now=now,
    )


def queued_timeout_error(timeout_s: float) -> str:
    """The reason a trigger no training worker took is failed with."""
    return (
        f"queued_timeout: no training worker (queue `training`) picked the trigger up within "
        f"{timeout_s:g} s (ELDEFECT_RETRAIN_QUEUED_TIMEOUT_S); is one running?"
    )


def expire_queued(
    *, session: Session, older_than: datetime, error: str, now: datetime
) -> list[int]:
    """Fail queued triggers created before `older_than` (no training worker took them, however
    often the message was re-sent); returns their ids. Without this a trigger opened while no
    worker listens on `training` would hold the one open slot for good."""
    # A worker taking one at this very moment keeps it.
    return _fail_each_where(
        session,
        RetrainTrigger.status == TriggerStatus.queued,
        RetrainTrigger.created_at < older_than,
        error=error,
        now=now,
    )


def _fail_each_where(
    session: Session, *conditions: ColumnElement[bool], error: str, now: datetime
) -> list[int]:
    """Fail the triggers matching `conditions`, each by an update that checks them again, so
    one that changed in between (renewed, taken) stays as it is; returns the ids failed."""
    ids = list(session.scalars(select(RetrainTrigger.id).where(*conditions)))
    return [
        trigger_id
        for trigger_id in ids
        if session.execute(
            update(RetrainTrigger)
            .where(RetrainTrigger.id == trigger_id, *conditions)
            .values(
                status=TriggerStatus.failed,
                error=error[:4000],
                open_slot=None,
                lease_expires_at=None,
                finished_at=now,
            )
        ).rowcount  # type: ignore[attr-defined]
    ]


def stale_queued(*, session: Session, older_than: datetime) -> list[int]:
    """Queued triggers created before `older_than`: their message may be lost (re-send)."""
    return list(
        session.scalars(
            select(RetrainTrigger.id).where(
                RetrainTrigger.status == TriggerStatus.queued,
                RetrainTrigger.created_at < older_than,
            )
        )
    )


def outcome_counts(*, session: Session) -> dict[tuple[str, str], int]:
    """Closed triggers by (reason, outcome), every pair present (zero when none)."""
    counts = {(reason, outcome): 0 for reason in REASONS for outcome in OUTCOMES}
    rows = session.execute(
        select(RetrainTrigger.reason, RetrainTrigger.status, RetrainTrigger.decision, func.count())
        .where(RetrainTrigger.open_slot.is_(None))
        .group_by(RetrainTrigger.reason, RetrainTrigger.status, RetrainTrigger.decision)
    ).all()
    for reason, status, decision, n in rows:
        outcome = "failed" if status == TriggerStatus.failed else str(decision)
        if (reason, outcome) in counts:
            counts[(reason, outcome)] += int(n)
    return counts


def recent_verdicts(
    *,
    session: Session,
    model_name: str,
    model_version: str | None,
    after: datetime | None,
    limit: int,
) -> Sequence[tuple[int, DriftVerdict]]:
    """The latest drift verdicts (id, verdict) of the served model that count toward a run of
    `drift`, newest first, at most `limit`.

    Reports that could not judge (`insufficient_data`) are left out: they neither make nor
    break a run of `drift` verdicts. Only reports after `after` count, so the reports that
    fired one trigger never fire the next. A `drift` report whose window overlaps the window
    of the newer report counted before it is left out too: it judged (some of) the same
    images again. With few images coming in, the `latest` window stays the same from check to
    check, and K reports on it are one judgement, not K. Tumbling windows never overlap, so
    there every conclusive report counts. Any other verdict is kept, so it breaks the run.
    """
    query = (
        select(
            DriftReport.id, DriftReport.verdict, DriftReport.window_start, DriftReport.window_end
        )
        .where(
            DriftReport.model_name == model_name,
            DriftReport.verdict != DriftVerdict.insufficient_data,
        )
        .order_by(DriftReport.id.desc())
    )
    if model_version is not None:
        query = query.where(DriftReport.model_version == model_version)
    if after is not None:
        query = query.where(DriftReport.created_at > after)
    counted: list[tuple[int, DriftVerdict]] = []
    last_window: tuple[datetime | None, datetime | None] = (None, None)  # the last counted one's
    # Newest first, in pages, until `limit` reports count or a non-drift verdict breaks the
    # run (the decision reads no further): a long run of reports over one window, or months
    # of reports since the last trigger, are not read all at once.
    result = session.execute(query.execution_options(yield_per=256))
    try:
        for report_id, stored, start, end in result:
            verdict = DriftVerdict(stored)
            if verdict == DriftVerdict.drift and _overlap((start, end), last_window):
                continue
            counted.append((int(report_id), verdict))
            last_window = (start, end)
            if len(counted) >= limit or verdict != DriftVerdict.drift:
                break
    finally:
        result.close()
    return counted


def _overlap(
    a: tuple[datetime | None, datetime | None], b: tuple[datetime | None, datetime | None]
) -> bool:
    """Whether two windows (first, last result's time) share a moment, so maybe results. A
    report without a window overlaps nothing (every conclusive report has one)."""
    (a_start, a_end), (b_start, b_end) = a, b
    if a_start is None or a_end is None or b_start is None or b_end is None:
        return False
    return as_utc(a_start) <= as_utc(b_end) and as_utc(b_start) <= as_utc(a_end)
