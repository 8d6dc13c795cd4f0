"""The gateway sends `eldefect.infer(job_id)` by name; a broker outage never loses a job."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from eldefect.broker import INFER_TASK, broker_options, embedded_broker_folders
from eldefect.settings import Settings
from eldefect.wakeups import RedisMarker
from tests.gateway import factories
from tests.gateway.conftest import issue_token
from tests.gateway.test_jobs_api import _db


def _auth(client: TestClient) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(_db(client), 'line-1')}"}


def _submit(client: TestClient) -> str:
    response = client.post(
        "/v1/jobs", files={"file": ("a.png", factories.png8(), "image/png")}, headers=_auth(client)
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def test_broker_options_configure_the_embedded_filesystem_transport(settings_env: Path) -> None:
    settings = Settings()

    options = broker_options(settings)

    queue, processed = embedded_broker_folders(settings)
    assert queue.is_dir() and processed.is_dir()
    assert options["broker_url"] == "filesystem://"
    assert options["broker_transport_options"] == {
        "data_folder_in": str(queue),
        "data_folder_out": str(queue),
        "processed_folder": str(processed),
        "store_processed": False,
        "polling_interval": settings.broker_poll_interval_s,
        "control_folder": str(settings.var_dir / "broker" / "control"),
    }


def test_broker_options_leave_redis_alone() -> None:
    settings = Settings(broker_url="redis://localhost:6379/0")
    assert broker_options(settings) == {"broker_url": "redis://localhost:6379/0"}


def test_submit_puts_a_message_in_the_embedded_queue(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client()
    job_id = _submit(client)

    queue, _ = embedded_broker_folders(client.app.state.settings)  # type: ignore[attr-defined]
    messages = list(queue.glob("*.inference.cpu.msg"))
    assert len(messages) == 1
    envelope = json.loads(messages[0].read_bytes())
    assert envelope["headers"]["task"] == INFER_TASK
    assert job_id in envelope["headers"]["argsrepr"]


@pytest.mark.redis
def test_submit_pushes_one_pending_wake_up_to_the_redis_queue(
    make_client: Callable[..., TestClient], redis_url: str
) -> None:
    import redis

    client = make_client(broker_url=redis_url, inference_queue="inference.gpu")
    first = _submit(client)
    _submit(client)

    conn = redis.Redis.from_url(redis_url)
    try:
        # One wake-up is pending: the worker that takes it claims the second job too.
        assert conn.llen("inference.gpu") == 1
        message = json.loads(conn.lindex("inference.gpu", 0))  # type: ignore[arg-type]
        assert message["headers"]["task"] == INFER_TASK and first in message["headers"]["argsrepr"]
        RedisMarker(redis_url).clear("inference.gpu")  # as a worker does before it claims
        third = _submit(client)
        assert conn.llen("inference.gpu") == 2
        assert third in json.loads(conn.lindex("inference.gpu", 0))["headers"]["argsrepr"]  # type: ignore[arg-type]
    finally:
        conn.close()


def test_job_stays_queued_when_the_broker_is_down(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(broker_url="redis://127.0.0.1:9/0")  # nothing listens on port 9

    before = REGISTRY.get_sample_value("eldefect_gateway_enqueue_failures_total") or 0.0

    start = time.monotonic()
    job_id = _submit(client)

    assert time.monotonic() - start < 10
    job = client.get(f"/v1/jobs/{job_id}", headers=_auth(client)).json()
    assert job["status"] == "queued"
    assert REGISTRY.get_sample_value("eldefect_gateway_enqueue_failures_total") == before + 1


def test_route_inference_prefers_a_serving_gpu_then_cpu_then_the_setting() -> None:
    from eldefect.broker import route_inference

    gpu, cpu = "inference.gpu", "inference.cpu"
    assert route_inference({gpu: 1, cpu: 2}, {gpu: 1, cpu: 2}, cpu) == gpu
    assert route_inference({cpu: 1}, {gpu: 1, cpu: 1}, gpu) == cpu  # the GPU one still loads
    assert route_inference({}, {gpu: 1}, cpu) == gpu  # nobody serves yet: whoever listens
    assert route_inference({}, {"training": 1}, gpu) == gpu  # nobody listens: the setting


def test_submit_goes_to_the_queue_whose_workers_are_alive(
    make_client: Callable[..., TestClient],
) -> None:
    """inference.gpu configured, but only a CPU worker alive: the message goes to it."""
    from db.session import session_scope
    from db.workers import record_heartbeat

    client = make_client(inference_queue="inference.gpu", queue_cache_s=0)
    settings = client.app.state.settings  # type: ignore[attr-defined]
    queue, _ = embedded_broker_folders(settings)
    _submit(client)
    assert len(list(queue.glob("*.inference.gpu.msg"))) == 1, "no worker seen: the setting"

    with session_scope(settings.database_url) as session:
        record_heartbeat(
            session=session,
            name="cpu-1",
            queue="inference.cpu",
            device="cpu",
            model_name=settings.model_name,
            model_version="1",
            model_error=None,
        )
    _submit(client)
    assert len(list(queue.glob("*.inference.cpu.msg"))) == 1
