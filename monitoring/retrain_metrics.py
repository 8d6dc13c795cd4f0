"""`eldefect_retrain_triggers_total{reason, outcome}`: retrain triggers that ended, by reason
and how they ended (promoted, staged, rejected, failed).

A collector over the `retrain_triggers` table, not an in-process Counter: triggers end in
training workers, the sweep fails them from beat ticks, and every process would only count
its own. The table is the one truth and rows are never deleted, so the value only grows, as a
counter must. Every (reason, outcome) pair is reported from the first scrape (zero when none).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from db.retrains import outcome_counts
from db.session import session_scope

log = logging.getLogger(__name__)

METRIC = "eldefect_retrain_triggers"  # prometheus_client adds `_total` to counters


class RetrainTriggerCollector(Collector):
    """Register on a registry (`registry.register(RetrainTriggerCollector(url))`)."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            METRIC,
            "Retrain triggers that ended, by reason (drift, reviews, schedule, manual) and "
            "outcome (promoted, staged, rejected, failed).",
            labels=["reason", "outcome"],
        )
        try:
            with session_scope(self.database_url) as session:
                counts = outcome_counts(session=session)
        except Exception:  # a scrape must not fail because the database blinked
            log.exception("could not read retrain triggers for %s", METRIC)
            return
        for (reason, outcome), value in sorted(counts.items()):
            family.add_metric([reason, outcome], value)
        yield family
