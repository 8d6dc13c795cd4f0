"""With the database away, every endpoint answers in the contract's shape: 503, one log line
per failure, no traceback; and no message or start-up line shows a password."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.exc import DataError

from gateway.errors import install_error_handlers
from tests.gateway import factories
from tests.gateway.test_jobs_api import assert_error

PASSWORD = "s3cret-pw"


def closed_port_url() -> str:
    """A PostgreSQL URL on a loopback port nothing listens on: every connect is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"postgresql+psycopg://eldefect:{PASSWORD}@127.0.0.1:{port}/eldefect"


REQUESTS: dict[str, Callable[[TestClient, dict[str, str]], httpx.Response]] = {
    "submit": lambda c, h: c.post(
        "/v1/jobs", files={"file": ("a.png", factories.png8(), "image/png")}, headers=h
    ),
    "read": lambda c, h: c.get("/v1/jobs/abc?wait=1", headers=h),
    "batch": lambda c, h: c.post(
        "/v1/batches", files=[("files", ("a.png", factories.png8(), "image/png"))], headers=h
    ),
    "read_batch": lambda c, h: c.get("/v1/batches/abc", headers=h),
}


@pytest.mark.parametrize("auth_enabled", [True, False])
def test_every_endpoint_answers_503_database_unavailable_without_a_traceback(
    make_client: Callable[..., TestClient], caplog: pytest.LogCaptureFixture, auth_enabled: bool
) -> None:
    client = make_client(database_url=closed_port_url(), auth_enabled=auth_enabled)
    headers = {"Authorization": "Bearer some-station-token"}
    caplog.clear()

    with caplog.at_level(logging.WARNING):
        for name, send in REQUESTS.items():
            response = send(client, headers)
            assert_error(response, 503, "database_unavailable")
            assert response.headers["retry-after"], name

    outages = [r for r in caplog.records if "database unavailable" in r.getMessage()]
    assert len(outages) == len(REQUESTS)
    assert not [r for r in caplog.records if r.exc_info], "a failure logged a traceback"
    assert "Traceback" not in caplog.text
    assert PASSWORD not in caplog.text
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_readyz_shows_no_password(make_client: Callable[..., TestClient]) -> None:
    client = make_client(database_url=closed_port_url())

    response = client.get("/readyz")

    assert_error(response, 503, "not_ready")
    assert "database: OperationalError" in response.json()["error"]["message"]
    assert "model: cannot read the workers table" in response.json()["error"]["message"]
    assert PASSWORD not in response.text


def test_start_up_line_names_the_services_without_passwords(
    make_client: Callable[..., TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        make_client(database_url=closed_port_url(), broker_url=f"redis://:{PASSWORD}@127.0.0.1:1/0")

    start = [r.getMessage() for r in caplog.records if r.getMessage().startswith("gateway:")]
    assert start and "eldefect:***@127.0.0.1" in start[0] and "redis://:***@" in start[0]
    assert PASSWORD not in caplog.text


def test_gateway_warns_loudly_when_auth_is_off(
    make_client: Callable[..., TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        make_client(auth_enabled=False)
        make_client(auth_enabled=True)

    warnings = [r for r in caplog.records if "AUTHENTICATION IS OFF" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


def test_a_value_the_database_cannot_store_is_a_logged_422(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The net under the schemas' own checks: a DataError the code did not foresee."""
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/store")
    def store() -> None:
        raise DataError("INSERT ...", {}, ValueError("invalid byte sequence for encoding"))

    with caplog.at_level(logging.WARNING, logger="gateway.errors"):
        answer = TestClient(app).post("/store")
    assert_error(answer, 422, "validation_error")
    message = answer.json()["error"]["message"]
    assert message == "a value in this request cannot be stored: invalid byte sequence for encoding"
    assert message in caplog.text
