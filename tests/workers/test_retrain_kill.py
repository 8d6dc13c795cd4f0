"""A training worker SIGKILLed mid-training: its trigger ends `failed` at the first retrain
check after the lease ran out, and the slot is free for the next one (a real `eldefect worker
--queue training` process, on the embedded defaults)."""

from __future__ import annotations

import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from db import retrains
from db.migrate import upgrade
from db.models import RetrainTrigger, TriggerStatus, utcnow
from db.session import session_scope
from eldefect.settings import Settings, get_settings
from tests.conftest import ModelStore
from tests.workers import loop_data
from tests.workers.harness import Proc, wait_until
from workers.cli import eldefect_argv
from workers.retrain_policy import ProductionInfo, check_retrain

pytestmark = pytest.mark.slow

LEASE_S = 3.0


def _trigger(settings: Settings, trigger_id: int) -> RetrainTrigger:
    with session_scope(settings.database_url) as session:
        trigger = retrains.get_trigger(session=session, trigger_id=trigger_id)
        assert trigger is not None
        session.expunge(trigger)
        return trigger


def _check(settings: Settings) -> list[int]:
    """One beat tick's retrain check (no reason can fire: only the lease sweep acts)."""
    sent: list[int] = []
    report = check_retrain(
        settings=settings,
        send=sent.append,
        production=lambda: ProductionInfo("1", utcnow() - timedelta(hours=1)),
    )
    assert not sent and report.opened is None
    return report.expired


def test_a_killed_training_worker_leaves_its_trigger_failed_not_running_forever(
    production_model: ModelStore,
    settings_env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = loop_data.copy_folder(production_model.images, settings_env / "base")
    # Long enough (no early stop) that it is surely mid-training when killed.
    config = loop_data.write_config(settings_env / "retrain.yaml", root=base, epochs=500)
    raw = yaml.safe_load(config.read_text())
    raw["optim"]["patience"] = 500
    config.write_text(yaml.safe_dump(raw))
    for key, value in {
        "ELDEFECT_RETRAIN_CONFIG": str(config),
        "ELDEFECT_RETRAIN_LEASE_S": str(LEASE_S),
        "ELDEFECT_RETRAIN_ON_DRIFT": "false",
        "ELDEFECT_RETRAIN_ON_REVIEWS": "false",
        "ELDEFECT_RETRAIN_ON_SCHEDULE": "false",
    }.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    settings = get_settings()
    upgrade(settings.database_url)

    worker = Proc(
        ["worker", "--queue", "training", "--no-maintenance", "--name", "train@test"],
        tmp_path / "training.log",
    )
    try:
        worker.wait_for(" ready.")
        started = subprocess.run(
            [*eldefect_argv(), "retrain", "start", "--reason", "kill test"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "queued on the training queue" in started.stdout, started.stdout
        with session_scope(settings.database_url) as session:
            trigger_id = retrains.list_triggers(session=session, limit=1)[0].id

        # Training: the data cut-off is recorded just before train() starts; wait for epochs.
        wait_until(
            lambda: _trigger(settings, trigger_id).data_until is not None,
            90,
            "the training to start",
            worker.text,
            [worker],
        )
        worker.wait_for("epoch", timeout=60)
        time.sleep(2 * LEASE_S)  # past one lease: alive, it keeps renewing
        assert _check(settings) == []
        assert _trigger(settings, trigger_id).status == TriggerStatus.running

        worker.kill()
        killed_at = time.monotonic()
    finally:
        worker.stop()
    assert _trigger(settings, trigger_id).status == TriggerStatus.running  # nobody told it yet

    expired: list[int] = []

    def trigger_failed() -> bool:
        expired.extend(_check(settings))
        return bool(expired)

    wait_until(
        trigger_failed,
        4 * LEASE_S,
        "the check to fail the trigger",
        worker.text,
    )
    failed_after = time.monotonic() - killed_at
    trigger = _trigger(settings, trigger_id)
    print(
        f"\nFIGURES retrain kill: trigger {trigger_id} failed by the retrain check "
        f"{failed_after:.1f} s after SIGKILL (lease {LEASE_S} s): {trigger.error}"
    )
    assert expired == [trigger_id]
    assert trigger.status == TriggerStatus.failed and trigger.error == retrains.WORKER_LOST
    assert trigger.open_slot is None and trigger.finished_at is not None
    assert trigger.model_version is None  # it never got as far as registering
    assert failed_after <= 3 * LEASE_S
    # The slot is free: the next trigger opens.
    with session_scope(settings.database_url) as session:
        assert retrains.open_trigger(session=session, reason="manual", requested_by="test")
    # A training worker serves nothing, so it never loaded the production model.
    assert "workers.model_cache" not in worker.text()
