"""Retrain triggers in the database: one open at a time (decided by the database), leases."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from db import retrains
from db.models import TriggerStatus, utcnow
from db.session import session_scope


def _open(url: str, reason: str = "manual") -> int | None:
    with session_scope(url) as session:
        trigger = retrains.open_trigger(session=session, reason=reason, requested_by="test")
        return None if trigger is None else trigger.id


def test_only_one_trigger_opens_when_many_race(db_url: str) -> None:
    barrier = threading.Barrier(6)
    opened: list[int | None] = []

    def race() -> None:
        barrier.wait()
        opened.append(_open(db_url, "drift"))

    threads = [threading.Thread(target=race) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len([i for i in opened if i is not None]) == 1
    with session_scope(db_url) as session:
        assert len(retrains.list_triggers(session=session)) == 1


def test_a_closed_trigger_frees_the_slot(db_url: str) -> None:
    first = _open(db_url)
    assert first is not None and _open(db_url) is None
    with session_scope(db_url) as session:
        assert retrains.start_trigger(session=session, trigger_id=first, worker="w", lease_s=60)
        assert retrains.finish_trigger(
            session=session, trigger_id=first, decision="rejected", gate={}, champion_version="1"
        )
    second = _open(db_url)
    assert second is not None and second != first


def test_a_trigger_whose_lease_ran_out_is_failed_as_worker_lost(db_url: str) -> None:
    trigger_id = _open(db_url)
    assert trigger_id is not None
    with session_scope(db_url) as session:
        assert retrains.start_trigger(
            session=session, trigger_id=trigger_id, worker="w", lease_s=30
        )
        assert not retrains.start_trigger(  # a duplicate message finds it taken
            session=session, trigger_id=trigger_id, worker="w2", lease_s=30
        )
    with session_scope(db_url) as session:
        assert retrains.expire_triggers(session=session) == []  # lease still running
        later = utcnow() + timedelta(seconds=31)
        assert retrains.expire_triggers(session=session, now=later) == [trigger_id]
    with session_scope(db_url) as session:
        trigger = retrains.get_trigger(session=session, trigger_id=trigger_id)
        assert trigger is not None and trigger.status == TriggerStatus.failed
        assert trigger.error == retrains.WORKER_LOST and trigger.open_slot is None
        # The dead worker's late renewal cannot revive it.
        assert not retrains.renew_lease(session=session, trigger_id=trigger_id, lease_s=30)
        counts = retrains.outcome_counts(session=session)
    assert counts[("manual", "failed")] == 1
    assert sum(counts.values()) == 1 and len(counts) == 16


def test_expire_queued_fails_only_triggers_left_queued_past_the_cut(db_url: str) -> None:
    queued = _open(db_url)
    assert queued is not None
    error = retrains.queued_timeout_error(3600)

    def expire(session: Session, cut: datetime) -> list[int]:
        return retrains.expire_queued(session=session, older_than=cut, error=error, now=cut)

    with session_scope(db_url) as session:
        assert expire(session, utcnow() - timedelta(hours=1)) == []  # opened after the cut
        assert expire(session, utcnow() + timedelta(seconds=1)) == [queued]
        trigger = retrains.get_trigger(session=session, trigger_id=queued)
        assert trigger is not None and trigger.status == TriggerStatus.failed
        assert trigger.error == error and trigger.open_slot is None
    running = _open(db_url)
    assert running is not None, "the slot was freed"
    with session_scope(db_url) as session:
        assert retrains.start_trigger(session=session, trigger_id=running, worker="w", lease_s=60)
        # A running trigger is the lease's business, however old.
        assert expire(session, utcnow() + timedelta(days=1)) == []
