"""process_batch and run_sweep with a stand-in model: batching, bad images, idempotency."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from db import lifecycle
from db.models import InputStats, Job, JobStatus, Result
from db.session import session_scope
from db.workers import record_heartbeat
from eldefect.predictor import PredictionResult
from eldefect.settings import Settings
from tests.workers.factories import make_job, make_station, png_bytes
from workers.inference import drain, process_batch, run_sweep

LABELS = ["crack", "finger"]


class FakeModel:
    """Counts forward passes; probability of `crack` is the image's mean intensity."""

    def __init__(self, version: str = "1", fail_on_size: int | None = None) -> None:
        self.name, self.version = "el_defect_classifier", version
        self.input_size = 32
        self.calls: list[int] = []
        self.fail_on_size = fail_on_size

    def predict(self, images: Sequence[np.ndarray]) -> np.ndarray:
        self.calls.append(len(images))
        if self.fail_on_size is not None and any(im.shape[0] == self.fail_on_size for im in images):
            raise RuntimeError("shape the model cannot take")
        return np.array([[float(im.mean()), 0.1] for im in images], dtype=np.float32)

    def result(self, probs_row: np.ndarray) -> PredictionResult:
        probs = dict(zip(LABELS, map(float, probs_row), strict=True))
        return PredictionResult(
            probabilities=probs,
            defects=[k for k, p in probs.items() if p >= 0.5],
            thresholds=dict.fromkeys(LABELS, 0.5),
        )


def settings_for(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"database_url": url, "batch_size": 8, "batch_wait_ms": 0}
    return Settings(**{**values, **overrides})


def queued_jobs(url: str, images: list[bytes]) -> list[str]:
    with session_scope(url) as session:
        station = make_station(session)
        return [make_job(session, station=station, data=data).id for data in images]


def test_one_forward_pass_per_batch_and_bad_image_fails_at_once(db_url: str) -> None:
    ids = queued_jobs(
        db_url, [png_bytes(i) for i in range(5)] + [png_bytes(9)[:60], b"not an image"]
    )
    model = FakeModel()
    report = process_batch(settings=settings_for(db_url), model_source=lambda: model, prefer=ids[2])
    assert model.calls == [5], "the five good images go through one forward pass"
    assert sorted(report.succeeded) == sorted(ids[:5])
    assert sorted(report.failed) == sorted(ids[5:])
    with session_scope(db_url) as session:
        jobs = {j.id: j for j in session.scalars(select(Job))}
        assert all(jobs[i].status == JobStatus.succeeded for i in ids[:5])
        assert (
            jobs[ids[5]].status == JobStatus.failed and jobs[ids[5]].error_code == "corrupt_image"
        )
        assert jobs[ids[6]].error_code == "unsupported_media_type"
        assert jobs[ids[6]].error_message
        result = session.get(Result, ids[0])
        assert result is not None and result.model_version == "1"
        assert result.model_name == "el_defect_classifier" and result.queue_wait_ms >= 0
        assert session.scalar(select(func.count()).select_from(InputStats)) == 5


def test_batch_is_capped_at_batch_size(db_url: str) -> None:
    ids = queued_jobs(db_url, [png_bytes(i) for i in range(11)])
    model = FakeModel()
    settings = settings_for(db_url)
    first = process_batch(settings=settings, model_source=lambda: model, prefer=ids[10])
    assert ids[10] in first.claimed and len(first.claimed) == 8
    second = process_batch(settings=settings, model_source=lambda: model, prefer=ids[0])
    assert len(second.claimed) == 3 and model.calls == [8, 3]


def test_one_wake_up_drains_batches_until_one_comes_back_short(db_url: str) -> None:
    ids = queued_jobs(db_url, [png_bytes(i) for i in range(16)])  # exactly two full batches
    model = FakeModel()
    reports = drain(settings=settings_for(db_url), model_source=lambda: model, prefer=ids[15])
    assert ids[15] in reports[0].claimed
    # The second full batch might have left jobs behind, so a third (empty) claim looks.
    assert [len(r.claimed) for r in reports] == [8, 8, 0] and model.calls == [8, 8]
    assert sorted(i for r in reports for i in r.succeeded) == sorted(ids)


def test_batch_waits_for_more_jobs_within_batch_wait(db_url: str) -> None:
    first = queued_jobs(db_url, [png_bytes(0)])
    late: list[str] = []

    def submit_later() -> None:
        time.sleep(0.1)
        late.extend(queued_jobs(db_url, [png_bytes(1), png_bytes(2)]))

    thread = threading.Thread(target=submit_later)
    thread.start()
    model = FakeModel()
    report = process_batch(
        settings=settings_for(
            db_url, batch_wait_ms=20_000, batch_size=3
        ),  # full at 3: no 20 s wait
        model_source=lambda: model,
        prefer=first[0],
    )
    thread.join()
    assert model.calls == [3] and sorted(report.succeeded) == sorted(first + late)


def test_redelivered_message_for_a_finished_job_is_a_no_op(db_url: str) -> None:
    ids = queued_jobs(db_url, [png_bytes(0)])
    model = FakeModel()
    settings = settings_for(db_url)
    process_batch(settings=settings, model_source=lambda: model, prefer=ids[0])
    again = process_batch(settings=settings, model_source=lambda: model, prefer=ids[0])
    assert again.claimed == [] and model.calls == [1]
    with session_scope(db_url) as session:
        assert session.scalar(select(func.count()).select_from(Result)) == 1


def test_an_image_that_breaks_the_model_fails_alone(db_url: str) -> None:
    ids = queued_jobs(db_url, [png_bytes(0), png_bytes(1, size=40), png_bytes(2)])
    model = FakeModel(fail_on_size=40)
    report = process_batch(settings=settings_for(db_url), model_source=lambda: model)
    assert report.failed == [ids[1]] and sorted(report.succeeded) == sorted([ids[0], ids[2]])
    with session_scope(db_url) as session:
        job = session.get(Job, ids[1])
        assert job is not None and job.error_code == "inference_error"


def _errors(url: str, ids: list[str]) -> list[tuple[str | None, str | None]]:
    with session_scope(url) as session:
        jobs = [session.get(Job, i) for i in ids]
        return [(j.error_code, j.error_message) for j in jobs if j is not None]


def test_a_probability_that_is_not_a_number_fails_its_image_alone(db_url: str) -> None:
    """Stored, a NaN reads as "no defect" on SQLite and breaks the batch's insert on PostgreSQL."""
    ids = queued_jobs(db_url, [png_bytes(0), png_bytes(1, size=40), png_bytes(2)])

    class NaNOnSize40(FakeModel):
        def predict(self, images: Sequence[np.ndarray]) -> np.ndarray:
            rows = super().predict(images)
            rows[[im.shape[0] == 40 for im in images]] = np.nan
            return rows

    report = process_batch(settings=settings_for(db_url), model_source=NaNOnSize40)

    assert report.failed == [ids[1]] and sorted(report.succeeded) == sorted([ids[0], ids[2]])
    assert _errors(db_url, [ids[1]]) == [
        ("inference_error", "the model's output for this image is not a number (NaN or infinite)")
    ]


def test_a_model_that_fails_on_every_image_says_so_rather_than_blaming_each_image(
    db_url: str,
) -> None:
    ids = queued_jobs(db_url, [png_bytes(0), png_bytes(1)])

    class DeadDevice(FakeModel):
        def predict(self, images: Sequence[np.ndarray]) -> np.ndarray:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    process_batch(settings=settings_for(db_url), model_source=DeadDevice)
    for code, message in _errors(db_url, ids):
        assert code == "inference_error" and message is not None
        assert message.startswith("the model failed on every image of this batch, alone too")
        assert message.endswith(
            "RuntimeError: CUDA error: an illegal memory access was encountered"
        )

    alone = queued_jobs(db_url, [png_bytes(3)])  # one image: the model's own words are kept
    process_batch(settings=settings_for(db_url), model_source=DeadDevice)
    assert _errors(db_url, alone) == [
        (
            "inference_error",
            "the model could not process this image: CUDA error: an illegal "
            "memory access was encountered",
        )
    ]


def _outages() -> list[Exception]:
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeoutError

    closed = Exception("server closed the connection")
    return [
        OperationalError("INSERT", {}, closed),
        InterfaceError("INSERT", {}, Exception("connection already closed")),
        PoolTimeoutError("QueuePool limit of size 5 overflow 10 reached"),
        DBAPIError("INSERT", {}, closed, connection_invalidated=True),
    ]


@pytest.mark.parametrize("outage", _outages(), ids=lambda e: type(e).__name__)
def test_a_database_outage_hands_the_batch_back(
    db_url: str, monkeypatch: pytest.MonkeyPatch, outage: Exception
) -> None:
    """Every error that means the database is away (as the gateway reads them too), not only
    OperationalError: the jobs go back to queued for the task's retry, none is failed."""
    ids = queued_jobs(db_url, [png_bytes(0), png_bytes(1)])

    def broken(**_: Any) -> list[str]:
        raise outage

    monkeypatch.setattr(lifecycle, "record_results", broken)
    with pytest.raises(type(outage)):
        process_batch(settings=settings_for(db_url), model_source=FakeModel)
    with session_scope(db_url) as session:
        assert {j.status for j in session.scalars(select(Job))} == {JobStatus.queued}
    monkeypatch.undo()
    report = process_batch(settings=settings_for(db_url), model_source=FakeModel)
    assert sorted(report.succeeded) == sorted(ids)


def test_run_sweep_sends_one_wake_up_per_batch_of_requeued_jobs(db_url: str) -> None:
    ids = queued_jobs(db_url, [png_bytes(i) for i in range(5)])
    sent: list[tuple[str, str]] = []
    settings = settings_for(db_url, requeue_after_s=0.001, batch_size=2)
    report = run_sweep(settings=settings, send=lambda *message: sent.append(message))
    assert sorted(report.requeued_stale) == sorted(ids)
    assert len(sent) == 3 and {job for job, _ in sent} <= set(ids)  # ceil(5 / 2) batches
    assert {queue for _, queue in sent} == {"inference.cpu"}  # no worker seen: the setting


def heartbeat(
    url: str,
    name: str,
    queue: str,
    *,
    version: str | None,
    error: str | None = None,
    age_s: float = 0.0,
) -> None:
    with session_scope(url) as session:
        record_heartbeat(
            session=session,
            name=name,
            queue=queue,
            device="cpu",
            model_name="el_defect_classifier",
            model_version=version,
            model_error=error,
            now=lifecycle.utcnow() - timedelta(seconds=age_s),
        )


def test_run_sweep_re_sends_to_a_queue_with_live_workers(db_url: str) -> None:
    """A job sent to inference.gpu whose workers died reaches the CPU workers."""
    ids = queued_jobs(db_url, [png_bytes(0)])
    heartbeat(db_url, "gpu-1", "inference.gpu", version="1", age_s=600)  # died long ago
    heartbeat(db_url, "cpu-1", "inference.cpu", version="1")
    sent: list[tuple[str, str]] = []
    settings = settings_for(db_url, requeue_after_s=0.001, inference_queue="inference.gpu")
    run_sweep(settings=settings, send=lambda *message: sent.append(message))
    assert sent == [(ids[0], "inference.cpu")]
    heartbeat(db_url, "gpu-2", "inference.gpu", version="1")  # a GPU worker serves again
    sent.clear()
    run_sweep(settings=settings, send=lambda *message: sent.append(message))
    assert sent == [(ids[0], "inference.gpu")]


def test_jobs_fail_as_model_unavailable_only_when_no_live_worker_can_load_a_model(
    db_url: str,
) -> None:
    old = queued_jobs(db_url, [png_bytes(0), png_bytes(1)])
    with session_scope(db_url) as session:
        for job_id in old:
            job = session.get(Job, job_id)
            assert job is not None
            job.created_at = lifecycle.utcnow() - timedelta(seconds=120)
    fresh = queued_jobs(db_url, [png_bytes(2)])
    settings = settings_for(db_url, model_unavailable_fail_after_s=60)
    error = "cannot load el_defect_classifier@production version 2: UnsafeModelError: pickle"

    heartbeat(db_url, "cpu-1", "inference.cpu", version=None)  # still loading its first model
    assert run_sweep(settings=settings, send=lambda *_: None).unserved == []
    heartbeat(db_url, "cpu-1", "inference.cpu", version=None, error=error)
    heartbeat(db_url, "cpu-2", "inference.cpu", version="1", age_s=600)  # gone: does not count
    report = run_sweep(settings=settings, send=lambda *_: None)

    assert sorted(report.unserved) == sorted(old)
    with session_scope(db_url) as session:
        jobs = {j.id: j for j in session.scalars(select(Job))}
    assert {jobs[i].status for i in old} == {JobStatus.failed}
    assert {jobs[i].error_code for i in old} == {"model_unavailable"}
    assert error in (jobs[old[0]].error_message or "")
    assert jobs[fresh[0]].status == JobStatus.queued, "younger than the limit: still waits"


def test_a_non_transient_error_fails_the_batch_instead_of_looping(db_url: str) -> None:
    """An error a retry would repeat (here: a model whose result shape is wrong) ends the
    claimed jobs as failed, so they cannot cycle between queued and running forever."""
    ids = queued_jobs(db_url, [png_bytes(0), png_bytes(1)])

    class WrongShape(FakeModel):
        def result(self, probs_row: np.ndarray) -> PredictionResult:
            raise ValueError("3 labels for 2 outputs")

    with pytest.raises(ValueError):
        process_batch(settings=settings_for(db_url), model_source=WrongShape)
    with session_scope(db_url) as session:
        jobs = [session.get(Job, i) for i in ids]
        assert all(j is not None and j.status == JobStatus.failed for j in jobs)
        assert {j.error_code for j in jobs if j is not None} == {"internal_error"}


def test_claims_the_database_cannot_take_back_are_held_and_released_when_it_returns(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database goes away mid-batch: neither the results nor the release can be written.
    The claims are held in memory and handed back (and woken up) once it answers again, not
    at the end of their lease."""
    from sqlalchemy.exc import OperationalError

    from workers.claims import HeldClaims, release_claims

    ids = queued_jobs(db_url, [png_bytes(i) for i in range(3)])
    database_down = threading.Event()
    database_down.set()
    real_release = lifecycle.release_jobs

    def broken(**_: Any) -> list[str]:
        raise OperationalError("UPDATE", {}, Exception("connection refused"))

    def release_jobs(**kwargs: Any) -> list[str]:
        if database_down.is_set():
            broken()
        return real_release(**kwargs)

    woken: list[list[str]] = []
    held = HeldClaims(
        release=lambda jobs: release_claims(db_url, jobs), wake=woken.append, retry_s=0.05
    )
    monkeypatch.setattr(lifecycle, "record_results", broken)
    monkeypatch.setattr(lifecycle, "release_jobs", release_jobs)
    with pytest.raises(OperationalError):
        process_batch(
            settings=settings_for(db_url, running_timeout_s=300),
            model_source=FakeModel,
            on_unreleased=held.hold,
        )
    time.sleep(0.2)  # several failed tries
    assert held.held() == sorted(ids)
    with session_scope(db_url) as session:
        assert {j.status for j in session.scalars(select(Job))} == {JobStatus.running}

    database_down.clear()  # the database is back
    assert held.wait_empty(timeout=5)
    with session_scope(db_url) as session:
        assert {j.status for j in session.scalars(select(Job))} == {JobStatus.queued}
    assert [sorted(batch) for batch in woken] == [sorted(ids)]
    monkeypatch.undo()
    report = process_batch(settings=settings_for(db_url), model_source=FakeModel)
    assert sorted(report.succeeded) == sorted(ids)


def test_a_worker_whose_batch_outlives_its_lease_stops_reporting_a_model(db_url: str) -> None:
    """A hung forward pass: the heartbeat thread still runs, but must not say "serving", so
    wake-ups go to workers that do and, if none does, the backlog fails with the reason."""
    from db.workers import QueueCounts, live_workers
    from workers.housekeeping import Housekeeper
    from workers.model_cache import ModelState

    queued_jobs(db_url, [png_bytes(0)])
    entered, release = threading.Event(), threading.Event()

    class HungModel(FakeModel):
        def predict(self, images: Sequence[np.ndarray]) -> np.ndarray:
            entered.set()
            release.wait(30)
            return super().predict(images)

    settings = settings_for(db_url, running_timeout_s=0.3)
    keeper = Housekeeper(
        settings=settings,
        name="gpu-1",
        queue="inference.gpu",
        model_state=lambda: ModelState(version="1", error=None),
        send=lambda *_: None,
        sweep=False,
    )

    def seen() -> QueueCounts:
        keeper.heartbeat()
        with session_scope(db_url) as session:
            (row,) = live_workers(session=session, stale_after_s=60)
            assert row.name == "gpu-1"
            return QueueCounts.of([row], "el_defect_classifier")

    assert seen().serving == {"inference.gpu": 1}
    batch = threading.Thread(target=drain, kwargs={"settings": settings, "model_source": HungModel})
    batch.start()
    try:
        # On a loaded machine the claim itself can take longer than the lease, so wait for
        # the forward pass to begin, then for the lease to run out, instead of a fixed nap.
        assert entered.wait(20), "the batch never reached the forward pass"
        deadline = time.monotonic() + 20
        while seen().serving and time.monotonic() < deadline:
            time.sleep(0.1)
        assert seen().serving == {}
        with session_scope(db_url) as session:
            (row,) = live_workers(session=session, stale_after_s=60)
        assert row.model_error is not None and "looks stuck" in row.model_error
    finally:
        release.set()
        batch.join(30)
    assert seen().serving == {"inference.gpu": 1}  # the batch ended: serving again


def test_a_large_image_is_held_at_the_models_size_with_the_same_model_input(db_url: str) -> None:
    """Statistics from the full image; then only the model's input size is kept until the
    forward pass (a batch of module images at full size would need gigabytes), and
    preprocessing makes the very same model input of it."""
    from eldefect.preprocess import InputSpec, preprocess_batch

    rng = np.random.default_rng(0)
    pixels = (rng.random((300, 500)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    (job_id,) = queued_jobs(db_url, [buffer.getvalue()])
    seen: list[np.ndarray] = []

    class Recording(FakeModel):
        def predict(self, images: Sequence[np.ndarray]) -> np.ndarray:
            seen.extend(images)
            return super().predict(images)

    report = process_batch(settings=settings_for(db_url), model_source=Recording)
    assert report.succeeded == [job_id]
    assert [image.shape for image in seen] == [(32, 32)]
    with session_scope(db_url) as session:
        stats = session.get(InputStats, job_id)
        assert stats is not None and stats.mean == pytest.approx(pixels.mean() / 255, abs=1e-6)
    full = pixels.astype(np.float32) / 255
    spec = InputSpec(size=32, mean=0.5, std=0.25)
    assert np.array_equal(preprocess_batch(seen, spec), preprocess_batch([full], spec))
