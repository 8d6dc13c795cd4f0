"""When to retrain: the beat's retrain check, a plain function over the database.

One check (every `retrain_check_interval_s`):
1. fail running triggers whose lease ran out (the training worker crashed or was killed),
   and queued ones no training worker took within `retrain_queued_timeout_s` (none is
   running: `eldefect up` starts none, or the compose service is down),
2. re-send queued triggers whose message may be lost (younger than that timeout),
3. unless a trigger is open or the cooldown runs, decide from the facts (`decide`):
   `drift` (the latest K conclusive drift reports of the served version, over windows that
   do not overlap, all say drift),
   `reviews` (at least R jobs reviewed after the production model's data), `schedule`
   (T since the last trigger, or since the production model was registered); first match wins,
4. open the trigger (the database refuses a second open one) and send the training task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from db import retrains
from db.lifecycle import as_utc
from db.models import DriftVerdict, utcnow
from db.reviews import count_reviewed_jobs
from db.session import session_scope
from eldefect.settings import Settings

log = logging.getLogger(__name__)

BEAT = "beat"


@dataclass(frozen=True)
class ProductionInfo:
    version: str
    registered_at: datetime


@dataclass(frozen=True)
class Facts:
    """Everything the decision looks at, gathered in one place (tests build these directly)."""

    now: datetime
    # Newest first: conclusive reports, each over a window the newer ones did not judge
    # (db.retrains.recent_verdicts), so K of them saw K sets of images.
    drift: list[tuple[int, DriftVerdict]]
    new_reviews: int
    reviews_since: datetime | None  # the production model's data cut-off (None: no reviews)
    last_trigger_at: datetime | None
    production_registered_at: datetime | None


def decide(facts: Facts, settings: Settings) -> tuple[str, dict[str, Any]] | None:
    """(reason, inputs) of the trigger to open, or None. Cooldown and the open trigger are
    the caller's business; this only reads the facts."""
    k = settings.retrain_drift_reports
    if (
        settings.retrain_on_drift
        and len(facts.drift) >= k
        and all(verdict == DriftVerdict.drift for _, verdict in facts.drift[:k])
    ):
        return "drift", {"drift_reports": [report_id for report_id, _ in facts.drift[:k]]}
    if settings.retrain_on_reviews and facts.new_reviews >= settings.retrain_min_reviews:
        since = facts.reviews_since.isoformat() if facts.reviews_since else None
        return "reviews", {"reviews": facts.new_reviews, "reviews_since": since}
    reference = facts.last_trigger_at or facts.production_registered_at
    if (
        settings.retrain_on_schedule
        and reference is not None
        and facts.now - as_utc(reference) >= timedelta(seconds=settings.retrain_every_s)
    ):
        return "schedule", {"since": as_utc(reference).isoformat()}
    return None


@dataclass
class CheckReport:
    expired: list[int] = field(default_factory=list)  # running, lease ran out
    timed_out: list[int] = field(default_factory=list)  # queued, never taken
    resent: list[int] = field(default_factory=list)
    opened: int | None = None
    reason: str | None = None
    skipped: str | None = None  # why no decision was taken (open trigger, cooldown)


def check_retrain(
    *,
    settings: Settings,
    send: Callable[[int], object],
    production: Callable[[], ProductionInfo | None],
    now: datetime | None = None,
) -> CheckReport:
    """One beat tick (see the module docstring). `send(trigger_id)` publishes the training
    task; `production()` says which version serves and since when (the registry)."""
    now = now or utcnow()
    report = CheckReport()
    timeout_error = retrains.queued_timeout_error(settings.retrain_queued_timeout_s)
    with session_scope(settings.database_url) as session:
        report.expired = retrains.expire_triggers(session=session, now=now)
        report.timed_out = retrains.expire_queued(
            session=session,
            older_than=now - timedelta(seconds=settings.retrain_queued_timeout_s),
            error=timeout_error,
            now=now,
        )
        older = now - timedelta(seconds=settings.retrain_lease_s)
        report.resent = retrains.stale_queued(session=session, older_than=older)
    for trigger_id in report.expired:
        log.warning("retrain trigger %d failed: %s", trigger_id, retrains.WORKER_LOST)
    for trigger_id in report.timed_out:
        log.warning("retrain trigger %d failed: %s", trigger_id, timeout_error)
    for trigger_id in report.resent:
        send(trigger_id)

    with session_scope(settings.database_url) as session:
        if retrains.get_open_trigger(session=session) is not None:
            report.skipped = "a trigger is open"
            return report
        closed_at = retrains.last_closed_at(session=session)
        if closed_at is not None and now - as_utc(closed_at) < timedelta(
            seconds=settings.retrain_cooldown_s
        ):
            report.skipped = "cooldown"
            return report
        serving = production()
        facts = gather_facts(session=session, settings=settings, serving=serving, now=now)
    decision = decide(facts, settings)
    if decision is None:
        return report
    reason, inputs = decision
    with session_scope(settings.database_url) as session:
        trigger = retrains.open_trigger(
            session=session, reason=reason, requested_by=BEAT, inputs=inputs
        )
        if trigger is None:  # another beat (or an operator) opened one in between
            report.skipped = "another trigger opened first"
            return report
        trigger_id = trigger.id
    log.info("retrain trigger %d opened: %s %s", trigger_id, reason, inputs)
    report.opened, report.reason = trigger_id, reason
    send(trigger_id)
    return report


def gather_facts(
    *, session: Any, settings: Settings, serving: ProductionInfo | None, now: datetime
) -> Facts:
    last = retrains.last_trigger(session=session)
    last_at = last.created_at if last is not None else None
    drift = retrains.recent_verdicts(
        session=session,
        model_name=settings.model_name,
        model_version=serving.version if serving else None,
        after=last_at,  # reports that fired (or preceded) the last trigger do not count again
        limit=settings.retrain_drift_reports,
    )
    # The production model's data: the cut-off of the retraining that made it, if one did;
    # a model trained by hand saw no reviews, so every review is new to it.
    made_by = (
        retrains.trigger_for_version(
            session=session, model_name=settings.model_name, version=serving.version
        )
        if serving
        else None
    )
    since = made_by.data_until if made_by is not None else None
    return Facts(
        now=now,
        drift=list(drift),
        new_reviews=count_reviewed_jobs(session=session, after=since),
        reviews_since=since,
        last_trigger_at=last_at,
        production_registered_at=serving.registered_at if serving else None,
    )


def registry_production(settings: Settings) -> Callable[[], ProductionInfo | None]:
    """`production` for check_retrain, read from the MLflow registry."""

    def read() -> ProductionInfo | None:
        from eldefect.registry import resolve_alias, version_created_at

        uri = settings.mlflow_tracking_uri
        version = resolve_alias(settings.model_name, settings.model_alias, uri)
        if version is None:
            return None
        return ProductionInfo(version, version_created_at(settings.model_name, version, uri))

    return read
