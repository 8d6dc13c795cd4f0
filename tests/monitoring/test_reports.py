"""Drift checks over stored results: windows, versions, reports, the CLI (SQLite and Postgres)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from db import lifecycle
from db.migrate import upgrade
from db.models import DriftReport, TaskRun, utcnow
from db.session import session_scope
from eldefect.card import ModelCard
from eldefect.settings import Settings
from eldefect.stats import FEATURES
from monitoring.cli import drift as drift_cli
from monitoring.drift import Kind, Verdict
from monitoring.reports import (
    NO_PREDICTION_PROFILE,
    NOTHING_MEASURED,
    ProductionModel,
    ReportView,
    check_drift,
    latest_reports,
    run_drift_check,
)
from tests.fresh_python import fresh_python
from tests.workers.factories import make_job, make_station

NAME = "el_defect_classifier"
LABELS = ["crack", "finger"]
# Every statistic's reference: mean 0.5, std 0.1. Served images at 0.5 +- 0.02 look like it.
PROFILE = {
    "features": {f: {"mean": 0.5, "std": 0.1} for f in FEATURES},
    "positive_rates": {"crack": 0.2, "finger": 0.1},
    "n_images": 500,
    "predicted_positive_rates": {"crack": 0.25, "finger": 0.1},
    "mean_probabilities": {"crack": 0.3, "finger": 0.15},
    "n_validation_images": 120,
}


def card(profile: dict[str, object] = PROFILE) -> ModelCard:
    return ModelCard(
        labels=LABELS,
        input={"size": 64, "mean": 0.5, "std": 0.25},
        thresholds=dict.fromkeys(LABELS, 0.5),
        selection_metric="val_macro_ap",
        selection_value=0.9,
        profile=dict(profile),
    )


def settings_for(url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": url,
        "drift_window_size": 100,
        "drift_min_n": 20,
        "drift_window_mode": "latest",
    }
    return Settings(**{**values, **overrides})  # type: ignore[arg-type]


def serve(
    url: str,
    *,
    version: str,
    level: float,
    n: int,
    crack_every: int = 4,
    at: datetime | None = None,
    features: Sequence[str] = FEATURES,
) -> list[str]:
    """Store `n` results of `version` as a worker would: statistics near `level` (a +-0.02
    spread), `crack` predicted for every `crack_every`-th image, all stamped `at`."""
    spread = np.where(np.arange(n) % 2 == 0, 0.02, -0.02) if n % 2 == 0 else np.zeros(n)
    with session_scope(url) as session:
        station = make_station(session)
        ids = [make_job(session, station=station).id for _ in range(n)]
        outcomes = [
            lifecycle.JobOutcome(
                job_id=job_id,
                probabilities={"crack": 0.9 if i % crack_every == 0 else 0.1, "finger": 0.0},
                defects=["crack"] if i % crack_every == 0 else [],
                thresholds=dict.fromkeys(LABELS, 0.5),
                stats=dict.fromkeys(features, float(level + spread[i])),
                queue_wait_ms=1.0,
                inference_ms=1.0,
            )
            for i, job_id in enumerate(ids)
        ]
        lifecycle.record_results(
            session=session, outcomes=outcomes, model_name=NAME, model_version=version, now=at
        )
    return ids


def check(
    url: str, version: str, *, profile: dict[str, object] = PROFILE, **overrides: object
) -> ReportView:
    """One scheduled check with `version` under the production alias."""
    model = ProductionModel(NAME, version, card(profile))
    report = run_drift_check(
        settings=settings_for(url, **overrides), model_source=lambda _settings: model
    )
    assert report is not None, "a production model always gets a report"
    return report


def test_a_shifted_window_is_stored_as_drift_with_every_measure(db_url: str) -> None:
    serve(db_url, version="1", level=0.6, n=60)  # d = 1, z = sqrt(60) ~ 7.7 on every feature
    report = check(db_url, "1")
    assert report.verdict is Verdict.drift
    assert report.n == 60 and report.model_version == "1"
    assert report.window_start is not None and report.window_end is not None

    with session_scope(db_url) as session:
        [stored] = latest_reports(session=session, limit=5)
        run = session.get(TaskRun, "drift")
        assert run is not None
    assert stored == report
    assert [(m.kind, m.name) for m in stored.measures] == [
        *((Kind.feature, f) for f in FEATURES),
        (Kind.rate, "crack"),
        (Kind.rate, "finger"),
    ]
    mean = next(m for m in stored.measures if m.name == "mean")
    assert mean.window_value == pytest.approx(0.6)
    assert mean.effect == pytest.approx(1.0)
    assert mean.z == pytest.approx(60**0.5)
    assert mean.drifted
    crack = next(m for m in stored.measures if m.name == "crack")
    assert crack.window_value == pytest.approx(15 / 60)  # every 4th image
    assert crack.reference_value == 0.25 and crack.z == pytest.approx(0.0)
    assert not crack.drifted
    assert stored.thresholds["min_n"] == 20 and stored.thresholds["window_mode"] == "latest"
    json.dumps(stored.as_dict())  # what GET /v1/drift will answer


def test_a_window_like_the_reference_is_ok(db_url: str) -> None:
    serve(db_url, version="1", level=0.5, n=60)
    report = check(db_url, "1")
    assert report.verdict is Verdict.ok, report
    assert report.notes == []


def test_fewer_results_than_min_n_give_insufficient_data_not_an_alarm(db_url: str) -> None:
    serve(db_url, version="1", level=0.9, n=10)
    report = check(db_url, "1")
    assert report.verdict is Verdict.insufficient_data
    assert not any(m.drifted for m in report.measures)
    assert any("20 needed" in note for note in report.notes)


def test_a_promotion_starts_a_new_window(db_url: str) -> None:
    serve(db_url, version="1", level=0.7, n=60)
    assert check(db_url, "1").verdict is Verdict.drift

    fresh = check(db_url, "2")  # production moved to version 2: its results only
    assert fresh.verdict is Verdict.insufficient_data and fresh.n == 0
    assert fresh.measures == []

    serve(db_url, version="2", level=0.5, n=30)
    later = check(db_url, "2")
    assert later.n == 30 and later.verdict is Verdict.ok
    assert later.model_version == "2"


def test_an_old_profile_without_predicted_rates_gets_a_note_not_a_failure(db_url: str) -> None:
    old = {k: v for k, v in PROFILE.items() if k in ("features", "positive_rates", "n_images")}
    serve(db_url, version="1", level=0.5, n=40, crack_every=1)  # every image a crack
    report = check(db_url, "1", profile=old)
    assert report.verdict is Verdict.ok
    assert NO_PREDICTION_PROFILE in report.notes
    assert {m.kind for m in report.measures} == {Kind.feature}


def test_a_statistic_the_profile_or_the_results_lack_is_skipped_with_a_note(db_url: str) -> None:
    intensity = [f for f in FEATURES if f != "texture"]
    older = {**PROFILE, "features": {f: PROFILE["features"][f] for f in intensity}}  # type: ignore[index]
    serve(db_url, version="1", level=0.5, n=30)
    report = check(db_url, "1", profile=older)
    assert [m.name for m in report.measures if m.kind is Kind.feature] == intensity
    assert any("no 'texture'" in note for note in report.notes)

    serve(db_url, version="2", level=0.5, n=30, features=intensity)  # rows from older workers
    serve(db_url, version="2", level=0.5, n=30)
    mixed = check(db_url, "2")
    assert mixed.n == 60 and mixed.verdict is Verdict.ok
    assert [m.name for m in mixed.measures if m.kind is Kind.feature] == intensity
    assert any("'texture' is missing for 30 of 60" in note for note in mixed.notes)


def test_a_card_with_an_empty_profile_gives_insufficient_data_not_ok(db_url: str) -> None:
    serve(db_url, version="1", level=0.9, n=60)  # enough results, far from any reference
    report = check(db_url, "1", profile={})
    assert report.n == 60 and report.measures == []
    assert report.verdict is Verdict.insufficient_data
    assert NOTHING_MEASURED in report.notes and NO_PREDICTION_PROFILE in report.notes
    # A profile of only a statistic the results lack (older workers), and no rates: nothing.
    texture_only: dict[str, object] = {"features": {"texture": {"mean": 0.5, "std": 0.1}}}
    intensity = [f for f in FEATURES if f != "texture"]
    serve(db_url, version="2", level=0.9, n=60, features=intensity)
    lacking = check(db_url, "2", profile=texture_only)
    assert lacking.verdict is Verdict.insufficient_data and NOTHING_MEASURED in lacking.notes
    # With something to measure the note is not there.
    assert NOTHING_MEASURED not in check(db_url, "1").notes


def test_latest_mode_takes_the_newest_results_within_max_age(db_url: str) -> None:
    now = utcnow()
    serve(db_url, version="1", level=0.8, n=50, at=now - timedelta(hours=3))
    serve(db_url, version="1", level=0.5, n=40, at=now - timedelta(minutes=5))
    report = check(db_url, "1", drift_window_size=40)
    assert report.n == 40 and report.verdict is Verdict.ok
    # A bigger window reaches back into the older, shifted results ...
    assert check(db_url, "1", drift_window_size=90).verdict is Verdict.drift
    # ... unless they are older than max_age.
    aged = check(db_url, "1", drift_window_size=90, drift_max_age_s=3600)
    assert aged.n == 40 and aged.verdict is Verdict.ok


def test_tumbling_windows_do_not_overlap_and_keep_a_batch_together(db_url: str) -> None:
    now = utcnow()
    tumbling: dict[str, Any] = {"drift_window_mode": "tumbling", "drift_window_size": 30}
    serve(db_url, version="1", level=0.5, n=10, at=now - timedelta(minutes=30))
    first = check(db_url, "1", **tumbling)
    assert first.verdict is Verdict.insufficient_data and first.n == 10

    # One batch of 24 stored at one instant: the 30-result window takes all of it (34).
    serve(db_url, version="1", level=0.5, n=24, at=now - timedelta(minutes=20))
    serve(db_url, version="1", level=0.7, n=22, at=now - timedelta(minutes=10))
    second = check(db_url, "1", **tumbling)
    assert second.n == 34 and second.verdict is Verdict.ok
    third = check(db_url, "1", **tumbling)
    assert third.n == 22 and third.verdict is Verdict.drift
    assert third.window_start is not None and second.window_end is not None
    assert third.window_start > second.window_end
    empty = check(db_url, "1", **tumbling)
    assert empty.n == 0


def test_no_production_model_marks_the_run_and_stores_no_report(db_url: str) -> None:
    assert run_drift_check(settings=settings_for(db_url), model_source=lambda _s: None) is None
    with session_scope(db_url) as session:
        assert session.scalars(select(DriftReport)).first() is None
        assert session.get(TaskRun, "drift") is not None


def test_check_drift_leaves_the_commit_to_the_caller(db_url: str) -> None:
    serve(db_url, version="1", level=0.5, n=30)
    with session_scope(db_url) as session:
        check_drift(
            session=session,
            settings=settings_for(db_url),
            model=ProductionModel(NAME, "1", card()),
        )
        session.rollback()
    with session_scope(db_url) as session:
        assert latest_reports(session=session, limit=5) == []


def test_drift_report_command_prints_the_latest_reports_as_a_table(
    settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eldefect.settings import get_settings

    url = get_settings().database_url
    upgrade(url)
    runner = CliRunner()
    assert "no drift reports yet" in runner.invoke(drift_cli, ["report"]).output
    serve(url, version="3", level=0.5, n=30)
    check(url, "3")
    serve(url, version="3", level=0.75, n=30)
    check(url, "3")
    result = runner.invoke(drift_cli, ["report", "--last", "1"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "DRIFT" in lines[0] and "v3" in lines[0] and "n=60" in lines[0]
    assert result.output.count("report ") == 1, "--last 1 prints one report"
    mean_row = next(line.split() for line in lines if line.split()[:2] == ["feature", "mean"])
    assert float(mean_row[2]) == pytest.approx(0.625, abs=1e-4)  # window mean of both batches
    assert mean_row[-1] == "DRIFT"
    assert sum(1 for line in lines if line.split()[:1] == ["class"]) == len(LABELS)


def test_the_drift_modules_import_neither_torch_nor_serving_code() -> None:
    code = (
        "import sys, monitoring.cli, monitoring.reports\n"
        "heavy = [m for m in ('torch', 'mlflow', 'workers', 'gateway') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = fresh_python(code)
    assert out.strip() == ""
