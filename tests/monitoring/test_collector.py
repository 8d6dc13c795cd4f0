"""The exporter reads queue depth, drift and task runs from the database at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from db.models import DriftMeasure, DriftReport, DriftVerdict, JobStatus
from db.session import session_scope
from db.task_runs import record_task_run
from eldefect.settings import Settings
from monitoring.collector import FAMILIES, read_state
from monitoring.exporter import MetricsPortError, serve_exporter
from monitoring.retrain_metrics import METRIC as RETRAIN_METRIC
from tests.workers.factories import make_job, make_station


def scrape(settings: Settings) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Serve the exporter on a free port, GET /metrics once, parse every sample."""
    server = serve_exporter(settings, 0)
    try:
        text = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10).text
    finally:
        server.shutdown()
        server.server_close()
    samples = {}
    for family in text_string_to_metric_families(text):
        declared = family.name in FAMILIES or family.name == RETRAIN_METRIC
        assert declared, f"{family.name} is not declared in FAMILIES"
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def add_report(
    url: str, *, version: str, verdict: DriftVerdict, at: datetime, z: float = 0.0
) -> None:
    with session_scope(url) as session:
        report = DriftReport(
            created_at=at,
            model_name="el_defect_classifier",
            model_version=version,
            n=200,
            verdict=verdict,
            thresholds={},
            notes=[],
        )
        report.measures = [
            DriftMeasure(
                kind="feature",
                name="mean",
                window_value=0.6,
                reference_value=0.5,
                z=z,
                effect=z / 10,
                drifted=abs(z) > 3,
            ),
            DriftMeasure(
                kind="class",
                name="crack",
                window_value=0.2,
                reference_value=0.1,
                z=2.0,
                effect=0.3,
                drifted=False,
            ),
        ]
        session.add(report)


@pytest.fixture
def settings(db_url: str) -> Iterator[Settings]:
    yield Settings(database_url=db_url, metrics_host="127.0.0.1", inference_queue="inference.cpu")


def test_an_empty_database_exports_zeros_and_no_drift_measures(settings: Settings) -> None:
    samples = scrape(settings)
    assert samples[("eldefect_exporter_database_up", ())] == 1
    cpu = ("queue", "inference.cpu")
    assert samples[("eldefect_queue_jobs", (cpu, ("status", "queued")))] == 0
    assert samples[("eldefect_queue_jobs", (cpu, ("status", "running")))] == 0
    assert samples[("eldefect_queue_oldest_job_age_seconds", (cpu,))] == 0
    assert samples[("eldefect_task_last_run_timestamp_seconds", (("task", "sweep"),))] == 0
    for verdict in DriftVerdict:
        assert samples[("eldefect_drift_verdict", (("verdict", verdict.value),))] == 0
    assert not any(name == "eldefect_drift_z" for name, _ in samples)


def test_queue_depth_and_the_oldest_queued_job_come_from_the_database(
    settings: Settings,
) -> None:
    now = datetime.now(UTC)
    with session_scope(settings.database_url) as session:
        station = make_station(session)
        make_job(session, station=station, created_at=now - timedelta(seconds=90))
        make_job(session, station=station, created_at=now - timedelta(seconds=10))
        make_job(session, station=station, status=JobStatus.running)
        make_job(session, station=station, status=JobStatus.succeeded)
        old_done = make_job(session, station=station, created_at=now - timedelta(hours=2))
        old_done.status = JobStatus.failed  # finished jobs do not count, however old
    samples = scrape(settings)
    cpu = ("queue", "inference.cpu")
    assert samples[("eldefect_queue_jobs", (cpu, ("status", "queued")))] == 2
    assert samples[("eldefect_queue_jobs", (cpu, ("status", "running")))] == 1
    age = samples[("eldefect_queue_oldest_job_age_seconds", (cpu,))]
    assert 89 <= age < 150, age


def test_the_latest_report_of_the_served_model_is_exported(settings: Settings) -> None:
    now = datetime.now(UTC)
    add_report(
        settings.database_url, version="1", verdict=DriftVerdict.ok, at=now - timedelta(hours=1)
    )
    add_report(settings.database_url, version="2", verdict=DriftVerdict.drift, at=now, z=7.5)
    with session_scope(settings.database_url) as session:
        record_task_run(session=session, name="drift", now=now)
    samples = scrape(settings)
    assert samples[("eldefect_drift_verdict", (("verdict", "drift"),))] == 1
    assert samples[("eldefect_drift_verdict", (("verdict", "ok"),))] == 0
    assert samples[("eldefect_drift_window_jobs", ())] == 200
    feature = (("kind", "feature"), ("name", "mean"))
    assert samples[("eldefect_drift_z", feature)] == 7.5
    assert samples[("eldefect_drift_effect", feature)] == 0.75
    assert samples[("eldefect_drift_drifted", feature)] == 1
    assert samples[("eldefect_drift_drifted", (("kind", "class"), ("name", "crack")))] == 0
    assert samples[("eldefect_drift_reference_value", feature)] == 0.5
    model = (("name", "el_defect_classifier"), ("version", "2"))
    assert samples[("eldefect_drift_model_info", model)] == 1
    last = samples[("eldefect_drift_last_report_timestamp_seconds", ())]
    assert abs(last - now.timestamp()) < 1
    drift_run = samples[("eldefect_task_last_run_timestamp_seconds", (("task", "drift"),))]
    assert abs(drift_run - now.timestamp()) < 1
    # Classes drift by thresholds of their own (drift_rate_*), drawn on the class panels.
    for kind, z, effect in (
        ("feature", settings.drift_z_threshold, settings.drift_effect_threshold),
        ("class", settings.drift_rate_z_threshold, settings.drift_rate_effect_threshold),
    ):
        assert samples[("eldefect_drift_z_threshold", (("kind", kind),))] == z
        assert samples[("eldefect_drift_effect_threshold", (("kind", kind),))] == effect
    assert settings.drift_effect_threshold != settings.drift_rate_effect_threshold


def test_reports_of_another_model_name_are_not_this_ones(settings: Settings) -> None:
    with session_scope(settings.database_url) as session:
        state = read_state(session=session, model_name="some_other_model")
    add_report(settings.database_url, version="1", verdict=DriftVerdict.drift, at=datetime.now(UTC))
    with session_scope(settings.database_url) as session:
        assert read_state(session=session, model_name="some_other_model").report is None
        assert read_state(session=session, model_name="el_defect_classifier").report is not None
    assert state.report is None


def test_an_unreadable_database_is_a_metric_not_a_failed_scrape(tmp_path: object) -> None:
    # A database file that does not exist yet has no tables: every query fails.
    settings = Settings(database_url=f"sqlite:///{tmp_path}/missing.db")
    samples = scrape(settings)
    assert samples == {("eldefect_exporter_database_up", ()): 0}


def test_a_taken_port_is_a_clear_error(settings: Settings) -> None:
    server = serve_exporter(settings, 0)
    try:
        with pytest.raises(MetricsPortError, match="a port of its own"):
            serve_exporter(settings, server.server_port)
    finally:
        server.shutdown()
        server.server_close()
