"""POST /v1/jobs and GET /v1/jobs/{id}: the contract's shapes, status codes and auth."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.gateway import factories
from tests.gateway.conftest import issue_token, job_count

ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
JOB_KEYS = {
    "id",
    "status",
    "created_at",
    "finished_at",
    "module_id",
    "cell_id",
    "result",
    "error",
    "review",
}


def _db(client: TestClient) -> str:
    return str(client.app.state.settings.database_url)  # type: ignore[attr-defined]


def submit(
    client: TestClient,
    headers: dict[str, str],
    data: bytes | None = None,
    *,
    filename: str = "cell.png",
    fields: dict[str, str] | None = None,
):
    data = factories.png8() if data is None else data
    return client.post(
        "/v1/jobs",
        files={"file": (filename, data, "application/octet-stream")},
        data=fields or {},
        headers=headers,
    )


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert re.fullmatch(r"[a-z][a-z0-9_]*", body["error"]["code"])
    assert body["error"]["message"]
    assert "Traceback" not in response.text
    if code is not None:
        assert body["error"]["code"] == code


def test_submit_answers_202_with_location_and_a_queued_job(
    client: TestClient, auth: dict[str, str]
) -> None:
    response = submit(client, auth, fields={"module_id": "M-17", "cell_id": "C-04"})

    assert response.status_code == 202, response.text
    job = response.json()
    assert set(job) == JOB_KEYS
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert ISO_Z.match(job["created_at"])
    assert job["finished_at"] is None
    assert (job["module_id"], job["cell_id"]) == ("M-17", "C-04")
    assert job["result"] is None and job["error"] is None


def test_get_job_shows_the_result_once_succeeded(client: TestClient, auth: dict[str, str]) -> None:
    job_id = submit(client, auth).json()["id"]
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["status"] == "queued"

    factories.finish_job(_db(client), job_id)
    job = client.get(f"/v1/jobs/{job_id}", headers=auth).json()

    assert set(job) == JOB_KEYS
    assert job["status"] == "succeeded"
    assert ISO_Z.match(job["finished_at"])
    assert job["result"] == {
        "model": {"name": "el_defect_classifier", "version": "3"},
        "probabilities": {"crack": 0.91, "finger": 0.02},
        "defects": ["crack"],
        "thresholds": {"crack": 0.35, "finger": 0.5},
    }
    assert job["error"] is None


def test_failed_job_carries_its_error_and_no_result(
    client: TestClient, auth: dict[str, str]
) -> None:
    job_id = submit(client, auth).json()["id"]
    factories.finish_job(_db(client), job_id, fail=True)

    job = client.get(f"/v1/jobs/{job_id}", headers=auth).json()

    assert job["status"] == "failed"
    assert job["result"] is None
    assert job["error"] == {"code": "corrupt_image", "message": "the worker could not decode it"}


@pytest.mark.parametrize("wait", ["31", "-1", "abc"])
def test_wait_outside_0_to_30_is_a_contract_shaped_422(
    client: TestClient, auth: dict[str, str], wait: str
) -> None:
    job_id = submit(client, auth).json()["id"]
    assert_error(
        client.get(f"/v1/jobs/{job_id}?wait={wait}", headers=auth), 422, "validation_error"
    )


def test_wait_answers_as_soon_as_the_job_ends(client: TestClient, auth: dict[str, str]) -> None:
    job_id = submit(client, auth).json()["id"]
    timer = threading.Timer(0.5, factories.finish_job, args=(_db(client), job_id))
    timer.start()
    try:
        start = time.monotonic()
        job = client.get(f"/v1/jobs/{job_id}?wait=20", headers=auth).json()
        elapsed = time.monotonic() - start
    finally:
        timer.join()

    assert job["status"] == "succeeded"
    assert 0.4 < elapsed < 5.0


def test_wait_runs_out_and_answers_the_current_state(
    client: TestClient, auth: dict[str, str]
) -> None:
    job_id = submit(client, auth).json()["id"]

    start = time.monotonic()
    job = client.get(f"/v1/jobs/{job_id}?wait=0.5", headers=auth).json()

    assert job["status"] == "queued"
    assert time.monotonic() - start >= 0.45
    assert client.app.state.watcher.watched == 0  # type: ignore[attr-defined]


def test_wait_on_a_finished_job_answers_at_once(client: TestClient, auth: dict[str, str]) -> None:
    job_id = submit(client, auth).json()["id"]
    factories.finish_job(_db(client), job_id)

    start = time.monotonic()
    assert client.get(f"/v1/jobs/{job_id}?wait=30", headers=auth).json()["status"] == "succeeded"
    assert time.monotonic() - start < 2.0


def test_same_idempotency_key_returns_the_first_job_with_200(
    client: TestClient, auth: dict[str, str]
) -> None:
    key = {"Idempotency-Key": "scan-0001"}
    first = submit(client, auth | key)
    again = submit(client, auth | key, factories.png16())

    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == f"/v1/jobs/{first.json()['id']}"
    assert job_count(_db(client)) == 1


def test_same_idempotency_key_from_another_station_makes_a_new_job(
    client: TestClient, auth: dict[str, str]
) -> None:
    other = {"Authorization": f"Bearer {issue_token(_db(client), 'line-2')}"}
    key = {"Idempotency-Key": "scan-0001"}

    mine = submit(client, auth | key)
    theirs = submit(client, other | key)

    assert (mine.status_code, theirs.status_code) == (202, 202)
    assert mine.json()["id"] != theirs.json()["id"]


@pytest.mark.parametrize("header", [None, "Bearer not-a-token", "Basic dXNlcjpwdw=="])
def test_missing_or_invalid_token_is_401_with_www_authenticate(
    client: TestClient, auth: dict[str, str], header: str | None
) -> None:
    job_id = submit(client, auth).json()["id"]
    headers = {} if header is None else {"Authorization": header}

    for response in (
        submit(client, headers),
        client.get(f"/v1/jobs/{job_id}", headers=headers),
        client.get("/v1/batches/whatever", headers=headers),
    ):
        assert_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert job_count(_db(client)) == 1


def test_revoked_token_is_refused(client: TestClient) -> None:
    from db import jobs as crud
    from db.session import session_scope

    token = issue_token(_db(client), "line-9")
    with session_scope(_db(client)) as session:
        station = crud.get_station_by_name(session=session, name="line-9")
        assert station is not None
        crud.revoke_tokens(session=session, station_id=station.id)

    assert_error(submit(client, {"Authorization": f"Bearer {token}"}), 401, "unauthorized")


def test_a_revoked_token_is_refused_once_the_token_cache_time_has_passed(
    client: TestClient,
) -> None:
    from db import jobs as crud
    from db.session import session_scope
    from gateway.tokens import TokenCache

    now = [0.0]
    client.app.state.token_cache = TokenCache(5.0, clock=lambda: now[0])  # type: ignore[attr-defined]
    token = issue_token(_db(client), "line-9")
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/v1/jobs/nothing", headers=headers).status_code == 404  # token checked
    with session_scope(_db(client)) as session:
        station = crud.get_station_by_name(session=session, name="line-9")
        assert station is not None
        crud.revoke_tokens(session=session, station_id=station.id)

    now[0] = 4.9  # within the cache time this process still takes the token it checked
    assert client.get("/v1/jobs/nothing", headers=headers).status_code == 404
    now[0] = 5.1
    assert_error(client.get("/v1/jobs/nothing", headers=headers), 401, "unauthorized")
    assert_error(submit(client, headers), 401, "unauthorized")


def test_auth_can_be_switched_off_explicitly(make_client: Callable[..., TestClient]) -> None:
    client = make_client(auth_enabled="false")

    response = submit(client, {})

    assert response.status_code == 202
    assert client.get(response.headers["location"]).json()["id"] == response.json()["id"]


def test_another_stations_job_is_404(client: TestClient, auth: dict[str, str]) -> None:
    job_id = submit(client, auth).json()["id"]
    other = {"Authorization": f"Bearer {issue_token(_db(client), 'line-2')}"}

    assert_error(client.get(f"/v1/jobs/{job_id}", headers=other), 404, "job_not_found")
    assert_error(client.get("/v1/jobs/0123456789abcdef", headers=auth), 404, "job_not_found")
    long_id = client.get("/v1/jobs/" + "x" * 10_000, headers=auth)
    assert_error(long_id, 404, "job_not_found")
    assert len(long_id.json()["error"]["message"]) < 200


def test_a_trailing_slash_is_a_404_in_the_contract_shape_not_a_redirect(
    client: TestClient, auth: dict[str, str]
) -> None:
    job_id = submit(client, auth).json()["id"]
    assert_error(client.get(f"/v1/jobs/{job_id}/", headers=auth), 404, "not_found")
    upload = client.post("/v1/jobs/", files={"file": ("a.png", factories.png8())}, headers=auth)
    assert_error(upload, 404, "not_found")


BAD_INPUTS = {
    "not_an_image": (b"this is plain text, not an image\n" * 8, 415, "unsupported_media_type"),
    "zero_bytes": (b"", 400, "empty_file"),
    "truncated_png": (factories.truncated(factories.png8(256, 256)), 422, "corrupt_image"),
    "truncated_jpeg": (factories.truncated(factories.jpeg_rgb(256, 256)), 422, "corrupt_image"),
    "declares_30000x30000": (factories.png_declaring(30000, 30000), 413, "too_many_pixels"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_refused_at_upload_and_makes_no_job(
    client: TestClient, auth: dict[str, str], name: str
) -> None:
    data, status, code = BAD_INPUTS[name]

    # Declared as a PNG: the bytes decide, not the content type.
    response = client.post(
        "/v1/jobs", files={"file": (f"{name}.png", data, "image/png")}, headers=auth
    )

    assert_error(response, status, code)
    assert job_count(_db(client)) == 0


def test_file_over_the_byte_limit_is_413_and_makes_no_job(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(max_upload_bytes=2000)
    auth = {"Authorization": f"Bearer {issue_token(_db(client), 'line-1')}"}
    data = factories.png8(200, 200)
    assert len(data) > 2000

    assert_error(submit(client, auth, data), 413, "file_too_large")
    assert job_count(_db(client)) == 0


def test_request_body_over_the_limit_is_413_before_parsing(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(max_upload_bytes=1000)
    auth = {"Authorization": f"Bearer {issue_token(_db(client), 'line-1')}"}

    response = submit(client, auth, b"\0" * (2 * 1024 * 1024))

    assert_error(response, 413, "file_too_large")
    assert job_count(_db(client)) == 0


@pytest.mark.parametrize(
    "make",
    [factories.png8, factories.png16, factories.tiff16, factories.jpeg_rgb, factories.bmp],
    ids=["png8", "png16_gray", "tiff16", "jpeg_rgb", "bmp"],
)
def test_supported_formats_are_accepted(
    client: TestClient, auth: dict[str, str], make: Callable[[], bytes]
) -> None:
    response = submit(client, auth, make(), filename="upload.bin")

    assert response.status_code == 202, response.text
    assert job_count(_db(client)) == 1


def test_missing_file_field_is_a_contract_shaped_422(
    client: TestClient, auth: dict[str, str]
) -> None:
    response = client.post("/v1/jobs", data={"module_id": "M-1"}, headers=auth)
    assert_error(response, 422, "validation_error")
    assert "file" in response.json()["error"]["message"]


def test_framework_errors_use_the_contract_shape(client: TestClient, auth: dict[str, str]) -> None:
    assert_error(client.get("/v1/nothing-here", headers=auth), 404, "not_found")
    assert_error(client.delete("/v1/jobs/abc", headers=auth), 405, "method_not_allowed")


def test_unhandled_exception_is_a_500_without_stack_trace(client: TestClient) -> None:
    def boom() -> None:
        raise RuntimeError("secret internals")

    client.app.add_api_route("/boom", boom)  # type: ignore[attr-defined]

    response = client.get("/boom")

    assert_error(response, 500, "internal_error")
    assert "secret internals" not in response.text


def test_streamed_body_over_the_limit_is_413_in_the_contract_shape(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(max_upload_bytes=1000)
    auth = {"Authorization": f"Bearer {issue_token(_db(client), 'line-1')}"}
    boundary = "eldefectboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def chunks():
        yield head
        for _ in range(40):
            yield b"\0" * 65536
        yield tail

    response = client.post(
        "/v1/jobs",
        content=chunks(),
        headers=auth | {"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )

    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert_error(response, 413, "file_too_large")
    assert "too large" in response.json()["error"]["message"]  # cut off while streaming
    assert job_count(_db(client)) == 0
