"""Probes, metrics, OpenAPI truthfulness and the gateway's import weight."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from gateway.routes import health
from tests.gateway import factories
from tests.gateway.test_jobs_api import assert_error


def test_healthz_answers_ok(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_503_naming_the_missing_model(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_model(_settings: object) -> str:
        raise LookupError("registered model alias 'production' not found")

    monkeypatch.setattr(health, "check_model", no_model)

    response = client.get("/readyz")

    assert_error(response, 503, "not_ready")
    message = response.json()["error"]["message"]
    assert message.startswith("model: LookupError")
    assert "database" not in message and "broker" not in message


def test_readyz_is_200_when_everything_answers(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health, "check_model", lambda _s: "el_defect_classifier version 3")

    response = client.get("/readyz")

    assert response.status_code == 200, response.text
    assert response.json() == {
        "status": "ready",
        "checks": {
            "database": "ok",
            "broker": "ok (embedded)",
            "model": "el_defect_classifier version 3",
        },
    }


def test_readyz_reports_an_unreachable_broker_and_database(
    make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health, "check_model", lambda _s: "ok")
    client = make_client(
        broker_url="redis://127.0.0.1:9/0",
        database_url="postgresql+psycopg://nobody@127.0.0.1:9/none",
        readyz_timeout_s=10,
    )

    response = client.get("/readyz")

    assert_error(response, 503, "not_ready")
    message = response.json()["error"]["message"]
    assert "database:" in message and "broker:" in message


@pytest.mark.slow
def test_readyz_asks_the_real_mlflow_registry(make_client: Callable[..., TestClient]) -> None:
    client = make_client(readyz_timeout_s=120)

    response = client.get("/readyz")

    assert_error(response, 503, "not_ready")
    assert response.json()["error"]["message"].startswith("model: ")


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

    def schema_ref(op: dict, status: str) -> str:  # type: ignore[type-arg]
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
        " 'eldefect.train', 'eldefect.predictor') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""
