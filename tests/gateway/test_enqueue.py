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
    settings = Settings()  # type: ignore[call-arg]

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
    settings = Settings(broker_url="redis://localhost:6379/0")  # type: ignore[call-arg]
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
def test_submit_pushes_to_the_redis_queue(
    make_client: Callable[..., TestClient], redis_url: str
) -> None:
    import redis

    client = make_client(broker_url=redis_url, inference_queue="inference.gpu")
    _submit(client)
    _submit(client)

    conn = redis.Redis.from_url(redis_url)
    try:
        assert conn.llen("inference.gpu") == 2
        message = json.loads(conn.lindex("inference.gpu", 0))  # type: ignore[arg-type]
        assert message["headers"]["task"] == INFER_TASK
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
