"""eldefect_retrain_triggers_total counts ended triggers by reason and outcome."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from db import retrains
from db.session import session_scope
from monitoring.retrain_metrics import RetrainTriggerCollector


def test_the_counter_reads_ended_triggers_by_reason_and_outcome(db_url: str) -> None:
    registry = CollectorRegistry()
    registry.register(RetrainTriggerCollector(db_url))
    before = generate_latest(registry).decode()
    assert 'eldefect_retrain_triggers_total{outcome="failed",reason="drift"} 0.0' in before

    with session_scope(db_url) as session:
        trigger = retrains.open_trigger(session=session, reason="drift", requested_by="t")
        assert trigger is not None
        retrains.fail_trigger(session=session, trigger_id=trigger.id, error="x")
        open_one = retrains.open_trigger(session=session, reason="manual", requested_by="t")
        assert open_one is not None
    text = generate_latest(registry).decode()
    assert 'eldefect_retrain_triggers_total{outcome="failed",reason="drift"} 1.0' in text
    # An open trigger has no outcome yet.
    assert 'eldefect_retrain_triggers_total{outcome="failed",reason="manual"} 0.0' in text
