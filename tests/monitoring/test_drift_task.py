"""The beat entry and the Celery task over run_drift_check, with a model in a real registry."""

from __future__ import annotations

from pathlib import Path

from db.migrate import upgrade
from db.models import TaskRun
from db.session import session_scope
from eldefect.broker import DRIFT_TASK
from eldefect.settings import Settings, get_settings
from monitoring.reports import NO_PREDICTION_PROFILE, latest_reports
from tests.conftest import ModelStore


def test_beat_sends_the_drift_check_to_maintenance_and_lets_it_expire() -> None:
    from workers.app import celery_config

    settings = Settings(drift_interval_s=120)
    entry = celery_config(settings)["beat_schedule"]["drift-check"]
    assert entry["task"] == DRIFT_TASK
    assert entry["schedule"] == 120
    assert entry["options"] == {"queue": "maintenance", "expires": 120}


def test_the_drift_task_reports_on_the_production_version_from_its_card(
    production_model: ModelStore, settings_env: Path
) -> None:
    from workers.tasks import drift

    upgrade(get_settings().database_url)
    answer = drift.run()
    assert answer["verdict"] == "insufficient_data" and answer["n"] == 0
    with session_scope(get_settings().database_url) as session:
        [report] = latest_reports(session=session, limit=5)
        assert session.get(TaskRun, "drift") is not None
    assert report.id == answer["report"]
    assert (report.model_name, report.model_version) == (production_model.name, production_model.v1)
    # A card trained now carries the prediction reference: no "profile lacks" note.
    assert NO_PREDICTION_PROFILE not in report.notes
