"""Worker metrics move with the real batch, sweep and model-cache code paths."""

from __future__ import annotations

from prometheus_client import REGISTRY

from monitoring import metrics
from tests.workers.factories import png_bytes
from tests.workers.test_inference import FakeModel, queued_jobs, settings_for
from workers.inference import process_batch, run_sweep
from workers.model_cache import ModelCache


def value(metric: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric, labels) or 0.0


def test_every_outcome_and_code_exists_from_the_start() -> None:
    assert (
        REGISTRY.get_sample_value(
            "eldefect_worker_jobs_total", {"outcome": "succeeded", "code": "none"}
        )
        is not None
    )
    for code in metrics.FAILURE_CODES:
        labels = {"outcome": "failed", "code": code}
        assert REGISTRY.get_sample_value("eldefect_worker_jobs_total", labels) is not None


def test_a_batch_counts_outcomes_codes_timings_and_predictions(db_url: str) -> None:
    before = {
        "ok": value("eldefect_worker_jobs_total", outcome="succeeded", code="none"),
        "corrupt": value("eldefect_worker_jobs_total", outcome="failed", code="corrupt_image"),
        "batches": value("eldefect_worker_batch_size_count"),
        "batch_sum": value("eldefect_worker_batch_size_sum"),
        "waits": value("eldefect_worker_queue_wait_seconds_count"),
        "decodes": value("eldefect_worker_decode_duration_seconds_count"),
        "forwards": value("eldefect_worker_inference_duration_seconds_count"),
        "scored": value("eldefect_worker_predictions_total"),
        "crack": value("eldefect_worker_predictions_positive_total", label="crack"),
        "finger": value("eldefect_worker_predictions_positive_total", label="finger"),
    }
    # Mean intensity of random pixels is about 0.5: FakeModel's crack probability.
    images = [png_bytes(i) for i in range(4)] + [png_bytes(9)[:60]]  # truncated: corrupt_image
    queued_jobs(db_url, images)
    report = process_batch(settings=settings_for(db_url), model_source=FakeModel)
    assert len(report.succeeded) == 4 and len(report.failed) == 1

    ok = value("eldefect_worker_jobs_total", outcome="succeeded", code="none")
    assert ok - before["ok"] == 4
    failed = value("eldefect_worker_jobs_total", outcome="failed", code="corrupt_image")
    assert failed - before["corrupt"] == 1
    assert value("eldefect_worker_batch_size_count") - before["batches"] == 1
    assert value("eldefect_worker_batch_size_sum") - before["batch_sum"] == 5
    assert value("eldefect_worker_queue_wait_seconds_count") - before["waits"] == 5
    assert value("eldefect_worker_decode_duration_seconds_count") - before["decodes"] == 5
    assert value("eldefect_worker_inference_duration_seconds_count") - before["forwards"] == 1
    assert value("eldefect_worker_predictions_total") - before["scored"] == 4
    cracks = value("eldefect_worker_predictions_positive_total", label="crack") - before["crack"]
    assert cracks == sum(1 for i in range(4) if _mean(png_bytes(i)) >= 0.5)
    # finger is never positive (0.1 < 0.5) but its series exists.
    assert value("eldefect_worker_predictions_positive_total", label="finger") == before["finger"]
    assert (
        REGISTRY.get_sample_value("eldefect_worker_predictions_positive_total", {"label": "finger"})
        is not None
    )


def _mean(data: bytes) -> float:
    from eldefect.imaging import decode_gray

    return float(decode_gray(data, max_pixels=10**7).mean())


def test_a_redelivered_batch_counts_nothing_twice(db_url: str) -> None:
    queued_jobs(db_url, [png_bytes(0)])
    process_batch(settings=settings_for(db_url), model_source=FakeModel)
    before = value("eldefect_worker_jobs_total", outcome="succeeded", code="none")
    process_batch(settings=settings_for(db_url), model_source=FakeModel)  # nothing queued
    assert value("eldefect_worker_jobs_total", outcome="succeeded", code="none") == before


def test_the_sweep_marks_its_run_and_counts_worker_lost(db_url: str) -> None:
    from datetime import UTC, datetime, timedelta

    from db.models import Job, JobStatus, TaskRun
    from db.session import session_scope

    ids = queued_jobs(db_url, [png_bytes(0)])
    with session_scope(db_url) as session:
        job = session.get(Job, ids[0])
        assert job is not None
        job.status, job.attempts = JobStatus.running, 3
        job.lease_expires_at = datetime.now(UTC) - timedelta(seconds=1)
    before = value("eldefect_worker_jobs_total", outcome="failed", code="worker_lost")
    started = datetime.now(UTC)
    run_sweep(settings=settings_for(db_url, max_attempts=3), send=lambda *_: None)
    assert value("eldefect_worker_jobs_total", outcome="failed", code="worker_lost") == before + 1
    run_sweep(settings=settings_for(db_url), send=lambda *_: None)  # the row is updated, not added
    with session_scope(db_url) as session:
        runs = session.query(TaskRun).all()
        assert [run.name for run in runs] == ["sweep"]
        last = runs[0].last_run_at
        assert (last.replace(tzinfo=UTC) if last.tzinfo is None else last) >= started


def test_model_loads_failures_and_the_version_in_service() -> None:
    versions = {"current": "4"}
    broken = {"5"}

    def load(version: str) -> FakeModel:
        if version in broken:
            raise RuntimeError("broken artifact")
        return FakeModel(version)

    cache = ModelCache(resolve=lambda: versions["current"], load=load, check_interval_s=60)
    loads, failures = (
        value("eldefect_worker_model_loads_total"),
        value("eldefect_worker_model_load_failures_total"),
    )
    try:
        cache.get()
        assert value("eldefect_worker_model_info", name="el_defect_classifier", version="4") == 1
        assert value("eldefect_worker_model_loaded") == 1
        versions["current"] = "5"
        assert cache.check_now() is False
        assert value("eldefect_worker_model_load_failures_total") == failures + 1
        versions["current"] = "6"
        assert cache.check_now() is True
    finally:
        cache.stop()
    assert value("eldefect_worker_model_loads_total") == loads + 2
    info = {
        s.labels["version"]
        for family in REGISTRY.collect()
        if family.name == "eldefect_worker_model_info"
        for s in family.samples
    }
    assert info == {"6"}, "only the version in service is shown"
