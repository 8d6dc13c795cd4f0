"""The beat's retrain decision: which reason fires, cooldown, and exactly one trigger per race."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from db import retrains
from db.models import DriftReport, DriftVerdict, TriggerStatus, utcnow
from db.session import session_scope
from eldefect.settings import Settings
from workers.retrain_policy import Facts, ProductionInfo, check_retrain, decide

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
OK, DRIFT = DriftVerdict.ok, DriftVerdict.drift


def facts(**changes: object) -> Facts:
    base: dict[str, object] = {
        "now": NOW,
        "drift": [],
        "new_reviews": 0,
        "reviews_since": None,
        "last_trigger_at": NOW - timedelta(hours=1),
        "production_registered_at": NOW - timedelta(days=30),
    }
    return Facts(**(base | changes))  # type: ignore[arg-type]


def settings(**values: object) -> Settings:
    return Settings(**({"retrain_drift_reports": 3, "retrain_min_reviews": 10} | values))  # type: ignore[arg-type]


def test_k_consecutive_drift_verdicts_fire_and_fewer_do_not() -> None:
    s = settings()
    assert decide(facts(drift=[(9, DRIFT), (8, DRIFT), (7, DRIFT)]), s) == (
        "drift",
        {"drift_reports": [9, 8, 7]},
    )
    assert decide(facts(drift=[(9, DRIFT), (8, DRIFT)]), s) is None
    assert decide(facts(drift=[(9, DRIFT), (8, OK), (7, DRIFT)]), s) is None
    assert decide(facts(drift=[(9, DRIFT)] * 3), settings(retrain_on_drift=False)) is None


def test_enough_new_reviews_fire() -> None:
    assert decide(facts(new_reviews=10), settings()) == (
        "reviews",
        {"reviews": 10, "reviews_since": None},
    )
    assert decide(facts(new_reviews=9), settings()) is None
    assert decide(facts(new_reviews=50), settings(retrain_on_reviews=False)) is None


def test_the_schedule_fires_after_t_since_the_last_trigger_or_the_model() -> None:
    week = 7 * 24 * 3600.0
    s = settings(retrain_every_s=week)
    assert decide(facts(last_trigger_at=NOW - timedelta(days=8)), s) is not None
    assert decide(facts(last_trigger_at=NOW - timedelta(days=6)), s) is None
    first = facts(last_trigger_at=None, production_registered_at=NOW - timedelta(days=8))
    assert decide(first, s) == ("schedule", {"since": (NOW - timedelta(days=8)).isoformat()})
    assert decide(first, settings(retrain_on_schedule=False)) is None
    assert decide(facts(last_trigger_at=None, production_registered_at=None), s) is None


def test_drift_comes_before_reviews() -> None:
    both = facts(drift=[(3, DRIFT), (2, DRIFT), (1, DRIFT)], new_reviews=99)
    decision = decide(both, settings())
    assert decision is not None and decision[0] == "drift"


Window = tuple[datetime, datetime]


def _add_reports(
    url: str,
    verdicts: list[DriftVerdict],
    version: str = "1",
    windows: list[Window] | None = None,
) -> list[int]:
    """Stored reports, oldest first, each over its window (none given: no window)."""
    no_window: tuple[datetime | None, datetime | None] = (None, None)
    spans = windows if windows is not None else [no_window] * len(verdicts)
    with session_scope(url) as session:
        rows = [
            DriftReport(
                model_name="el_defect_classifier",
                model_version=version,
                n=100,
                verdict=verdict,
                thresholds={},
                notes=[],
                created_at=utcnow(),
                window_start=start,
                window_end=end,
            )
            for verdict, (start, end) in zip(verdicts, spans, strict=True)
        ]
        session.add_all(rows)
        session.flush()
        return [row.id for row in rows]


def _windows(first: datetime, count: int, minutes: int = 10) -> list[Window]:
    """`count` successive windows that do not overlap, from `first` on."""
    step = timedelta(minutes=minutes)
    return [(first + i * step, first + (i + 1) * step - timedelta(seconds=1)) for i in range(count)]


@pytest.fixture
def policy_settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=db_url,
        var_dir=tmp_path,
        retrain_drift_reports=3,
        retrain_cooldown_s=3600,
        retrain_on_schedule=False,
    )


def _serving() -> ProductionInfo:
    return ProductionInfo("1", utcnow() - timedelta(days=1))


def test_two_racing_checks_open_exactly_one_trigger(policy_settings: Settings) -> None:
    _add_reports(policy_settings.database_url, [DRIFT, DRIFT, DRIFT])
    sent: list[int] = []
    barrier = threading.Barrier(2)

    def production() -> ProductionInfo:
        barrier.wait()  # both ticks have read "nothing open" before either opens one
        return _serving()

    threads = [
        threading.Thread(
            target=check_retrain,
            kwargs={"settings": policy_settings, "send": sent.append, "production": production},
        )
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(sent) == 1
    with session_scope(policy_settings.database_url) as session:
        triggers = retrains.list_triggers(session=session)
    assert len(triggers) == 1 and triggers[0].reason == "drift"
    assert len(triggers[0].inputs["drift_reports"]) == 3


def test_cooldown_and_used_reports_hold_the_next_trigger(policy_settings: Settings) -> None:
    url = policy_settings.database_url
    _add_reports(url, [DRIFT, DRIFT, DRIFT])
    sent: list[int] = []
    first = check_retrain(settings=policy_settings, send=sent.append, production=_serving)
    assert first.opened is not None
    assert check_retrain(settings=policy_settings, send=sent.append, production=_serving).skipped
    with session_scope(url) as session:
        retrains.fail_trigger(session=session, trigger_id=first.opened, error="test")
    in_cooldown = check_retrain(settings=policy_settings, send=sent.append, production=_serving)
    assert in_cooldown.skipped == "cooldown"

    later = utcnow() + timedelta(hours=2)
    # The three reports that fired the first trigger do not fire another one.
    again = check_retrain(
        settings=policy_settings, send=sent.append, production=_serving, now=later
    )
    assert again.opened is None and again.skipped is None
    _add_reports(url, [DRIFT, DRIFT, DRIFT])
    fired = check_retrain(
        settings=policy_settings, send=sent.append, production=_serving, now=later
    )
    assert fired.reason == "drift" and sent == [first.opened, fired.opened]


def test_the_check_fails_a_dead_training_and_resends_a_lost_message(
    policy_settings: Settings,
) -> None:
    url = policy_settings.database_url
    with session_scope(url) as session:
        running = retrains.open_trigger(session=session, reason="manual", requested_by="t")
        assert running is not None
        retrains.start_trigger(session=session, trigger_id=running.id, worker="w", lease_s=10)
    sent: list[int] = []
    later = utcnow() + timedelta(seconds=11)
    report = check_retrain(
        settings=policy_settings, send=sent.append, production=_serving, now=later
    )
    assert report.expired == [running.id]

    with session_scope(url) as session:
        queued = retrains.open_trigger(session=session, reason="manual", requested_by="t")
        assert queued is not None
    much_later = later + timedelta(seconds=policy_settings.retrain_lease_s + 1)
    report = check_retrain(
        settings=policy_settings, send=sent.append, production=_serving, now=much_later
    )
    assert report.resent == [queued.id] and sent == [queued.id]


def test_a_queued_trigger_no_training_worker_takes_is_failed_after_the_timeout(
    policy_settings: Settings,
) -> None:
    url = policy_settings.database_url
    timeout = policy_settings.retrain_queued_timeout_s
    with session_scope(url) as session:
        queued = retrains.open_trigger(session=session, reason="manual", requested_by="t")
        assert queued is not None
    opened_at = utcnow()
    sent: list[int] = []
    within = check_retrain(
        settings=policy_settings,
        send=sent.append,
        production=_serving,
        now=opened_at + timedelta(seconds=timeout - 60),
    )
    assert within.resent == [queued.id] and within.skipped == "a trigger is open"

    past = check_retrain(
        settings=policy_settings,
        send=lambda _trigger_id: None,  # nobody listens on `training`
        production=_serving,
        now=opened_at + timedelta(seconds=timeout + 1),
    )
    with session_scope(url) as session:
        trigger = retrains.get_trigger(session=session, trigger_id=queued.id)
        assert trigger is not None and trigger.status == TriggerStatus.failed
        assert trigger.open_slot is None
        assert trigger.error == retrains.queued_timeout_error(timeout)
        assert trigger.error.startswith("queued_timeout: no training worker")
        assert f"within {timeout:g} s" in trigger.error
        again = retrains.open_trigger(session=session, reason="manual", requested_by="t")
    assert again is not None, "the slot is free again"
    assert past.timed_out == [queued.id] and past.resent == []
    assert sent == [queued.id], "re-sent within the timeout, not after"


def test_drift_reports_over_one_window_count_once(policy_settings: Settings) -> None:
    url = policy_settings.database_url
    start = utcnow() - timedelta(hours=2)
    same = (start, start + timedelta(minutes=10))
    repeated = _add_reports(url, [DRIFT, DRIFT, DRIFT], windows=[same] * 3)
    sent: list[int] = []
    held = check_retrain(settings=policy_settings, send=sent.append, production=_serving)
    assert held.opened is None and sent == []

    # Two later, separate windows: with the one above, three sets of images said drift.
    later = _windows(start + timedelta(minutes=20), 2)
    newer = _add_reports(url, [DRIFT, DRIFT], windows=later)
    with session_scope(url) as session:
        counted = retrains.recent_verdicts(
            session=session,
            model_name="el_defect_classifier",
            model_version="1",
            after=None,
            limit=3,
        )
    # The newest of the three over one window counts, once.
    assert counted == [(newer[1], DRIFT), (newer[0], DRIFT), (repeated[2], DRIFT)]
    fired = check_retrain(settings=policy_settings, send=sent.append, production=_serving)
    assert fired.reason == "drift" and sent == [fired.opened]


def test_drift_reports_over_successive_windows_fire(policy_settings: Settings) -> None:
    url = policy_settings.database_url
    ids = _add_reports(
        url, [DRIFT, DRIFT, DRIFT], windows=_windows(utcnow() - timedelta(hours=1), 3)
    )
    fired = check_retrain(settings=policy_settings, send=lambda _i: None, production=_serving)
    assert fired.reason == "drift"
    with session_scope(url) as session:
        trigger = retrains.get_trigger(session=session, trigger_id=fired.opened or 0)
        assert trigger is not None and trigger.inputs["drift_reports"] == ids[::-1]


def test_an_ok_over_an_overlapping_window_still_breaks_the_run(policy_settings: Settings) -> None:
    url = policy_settings.database_url
    first, second, third = _windows(utcnow() - timedelta(hours=1), 3)
    # ok over most of the newest window's images, between drift reports.
    overlapping = (second[0] + timedelta(minutes=5), third[0] + timedelta(minutes=5))
    _add_reports(url, [DRIFT, DRIFT, OK, DRIFT], windows=[first, second, overlapping, third])
    held = check_retrain(settings=policy_settings, send=lambda _i: None, production=_serving)
    assert held.opened is None
