"""Probes, metrics, OpenAPI truthfulness and the gateway's import weight."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from anyio import to_thread
from fastapi.testclient import TestClient

from db.session import session_scope
from db.workers import record_heartbeat
from tests.fresh_python import fresh_python
from tests.gateway import factories
from tests.gateway.test_jobs_api import assert_error


def test_healthz_answers_ok(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_probes_answer_head_as_load_balancers_send_it(client: TestClient) -> None:
    assert client.head("/healthz").status_code == 200
    assert client.head("/readyz").status_code == 503  # no worker serves a model here


def heartbeat(
    client: TestClient,
    name: str,
    *,
    queue: str = "inference.cpu",
    version: str | None = "3",
    error: str | None = None,
    age_s: float = 0.0,
) -> None:
    """A worker's row in the workers table, as its housekeeping thread writes it."""
    url = client.app.state.settings.database_url  # type: ignore[attr-defined]
    with session_scope(url) as session:
        record_heartbeat(
            session=session,
            name=name,
            queue=queue,
            device="cpu",
            model_name="el_defect_classifier",
            model_version=version,
            model_error=error,
            now=datetime.now(UTC) - timedelta(seconds=age_s),
        )


def test_readyz_is_200_when_a_live_worker_serves_the_model(client: TestClient) -> None:
    heartbeat(client, "cpu-1")

    response = client.get("/readyz")

    assert response.status_code == 200, response.text
    assert response.json() == {
        "status": "ready",
        "checks": {
            "database": "ok",
            "broker": "ok (embedded)",
            "model": "el_defect_classifier version 3 on 1 worker(s)",
            "queues": "inference.gpu: 0 worker(s), inference.cpu: 1 worker(s)",
        },
        "warnings": [],
    }


def test_readyz_is_503_with_the_workers_reason_when_the_model_cannot_load(
    client: TestClient,
) -> None:
    reason = "cannot load el_defect_classifier@production version 4: UnsafeModelError: no"
    heartbeat(client, "cpu-1", version=None, error=reason)
    heartbeat(client, "cpu-0", age_s=3600)  # served once, but long gone

    response = client.get("/readyz")

    assert_error(response, 503, "not_ready")
    message = response.json()["error"]["message"]
    assert message.startswith("model: el_defect_classifier is unavailable (cpu-1: cannot load")
    assert "UnsafeModelError" in message
    assert "database" not in message and "broker" not in message and "queues" not in message


def test_readyz_is_503_when_no_inference_queue_has_a_live_worker(client: TestClient) -> None:
    heartbeat(client, "trainer", queue="training", version=None)

    response = client.get("/readyz")

    assert_error(response, 503, "not_ready")
    message = response.json()["error"]["message"]
    assert "model: no inference worker seen in the last 30 s" in message
    assert "queues: no live worker on inference.gpu: 0 worker(s), inference.cpu: 0" in message


def test_readyz_warns_when_the_configured_queue_has_no_worker(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(inference_queue="inference.gpu")
    heartbeat(client, "cpu-1")

    response = client.get("/readyz")

    assert response.status_code == 200, response.text
    assert response.json()["warnings"] == [
        "inference.gpu has no live worker; inference tasks go to inference.cpu"
    ]


def test_readyz_reports_an_unreachable_broker_and_database(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(
        broker_url="redis://127.0.0.1:9/0",
        database_url="postgresql+psycopg://nobody@127.0.0.1:9/none",
        readyz_timeout_s=10,
    )

    response = client.get("/readyz")

    assert_error(response, 503, "not_ready")
    message = response.json()["error"]["message"]
    assert "database:" in message and "broker:" in message
    assert "model: cannot read the workers table" in message


def test_metrics_expose_request_and_job_counters(client: TestClient, auth: dict[str, str]) -> None:
    client.post("/v1/jobs", files={"file": ("a.png", factories.png8())}, headers=auth)
    client.post("/v1/jobs", files={"file": ("a.png", b"nope")}, headers=auth)

    response = client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'eldefect_gateway_requests_total{method="POST",route="/v1/jobs",status="202"}' in text
    assert "eldefect_gateway_request_duration_seconds_bucket" in text
    assert 'eldefect_gateway_jobs_accepted_total{endpoint="jobs"}' in text
    assert 'eldefect_gateway_jobs_refused_total{reason="unsupported_media_type"}' in text
    assert 'eldefect_gateway_jobs_refused_total{reason="too_many_pixels"}' in text  # initialised


def test_openapi_documents_statuses_and_the_error_schema(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    error_ref = "#/components/schemas/ErrorBody"

    def schema_ref(op: dict[str, Any], status: str) -> str:
        return str(op["responses"][status]["content"]["application/json"]["schema"]["$ref"])

    post_job = spec["paths"]["/v1/jobs"]["post"]
    assert schema_ref(post_job, "202").endswith("/JobPublic")
    assert schema_ref(post_job, "200").endswith("/JobPublic")
    assert "Location" in post_job["responses"]["202"]["headers"]
    for status in ("400", "401", "413", "415", "422"):
        assert schema_ref(post_job, status) == error_ref
    get_job = spec["paths"]["/v1/jobs/{job_id}"]["get"]
    assert schema_ref(get_job, "422") == error_ref
    assert schema_ref(get_job, "404") == error_ref
    assert "HTTPValidationError" not in str(spec["paths"])
    post_batch = spec["paths"]["/v1/batches"]["post"]
    assert schema_ref(post_batch, "202").endswith("/BatchPublic")
    assert schema_ref(spec["paths"]["/readyz"]["get"], "503") == error_ref
    wait = next(p for p in get_job["parameters"] if p["name"] == "wait")
    assert wait["schema"]["minimum"] == 0 and wait["schema"]["maximum"] == 30
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


def test_importing_the_gateway_leaves_torch_mlflow_and_workers_out() -> None:
    code = (
        "import sys, gateway.app\n"
        "heavy = [m for m in ('torch', 'torchvision', 'mlflow', 'workers', 'eldefect.models',"
        " 'eldefect.train', 'eldefect.predictor', 'numpy') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = fresh_python(code)
    assert out.strip() == ""


def test_the_gateway_command_leaves_alembic_out_when_it_does_not_migrate() -> None:
    """Alembic, Mako and Pygments (~8 MiB resident) load only to migrate."""
    code = (
        "import sys, eldefect.cli, gateway.cli, gateway.app\n"
        "print(','.join(m for m in ('alembic', 'mako', 'pygments') if m in sys.modules))\n"
    )
    out = fresh_python(code)
    assert out.strip() == ""


def test_blocking_work_runs_in_at_most_gateway_threads_threads(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(gateway_threads=3)
    limiter = client.portal.call(to_thread.current_default_thread_limiter)  # type: ignore[union-attr]
    assert limiter.total_tokens == 3


def test_uploads_leave_numpy_out_of_the_gateway(settings_env: Path) -> None:
    """The upload check needs Pillow only: numpy (~16 MiB resident) stays out of the gateway."""
    code = (
        "import io, sys\n"
        "from PIL import Image\n"
        "from fastapi.testclient import TestClient\n"
        "from db.migrate import upgrade\n"
        "from db.session import session_scope\n"
        "from db import jobs as crud\n"
        "from eldefect.settings import get_settings\n"
        "from gateway.app import create_app\n"
        "url = get_settings().database_url\n"
        "upgrade(url)\n"
        "with session_scope(url) as session:\n"
        "    station = crud.get_or_create_station(session=session, name='line-1')\n"
        "    token = crud.create_token(session=session, station_id=station.id)\n"
        "auth = {'Authorization': f'Bearer {token}'}\n"
        "with TestClient(create_app(get_settings())) as client:\n"
        "    for fmt in ('JPEG', 'PNG', 'TIFF'):\n"
        "        body = io.BytesIO()\n"
        "        Image.new('L', (64, 48), 128).save(body, fmt)\n"
        "        answer = client.post('/v1/jobs', files={'file': ('x', body.getvalue())},"
        " headers=auth)\n"
        "        assert answer.status_code == 202, answer.text\n"
        "        client.get(answer.headers['location'], headers=auth)\n"
        "print('numpy' in sys.modules)\n"
    )
    out = fresh_python(code, timeout=120)
    assert out.strip().splitlines()[-1] == "False"
