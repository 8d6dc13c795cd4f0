"""POST /v1/batches and GET /v1/batches/{id}: all files validated first, jobs in upload order."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from fastapi.testclient import TestClient

from tests.gateway import factories
from tests.gateway.conftest import issue_token, job_count
from tests.gateway.test_jobs_api import JOB_KEYS, _db, assert_error


def post_batch(
    client: TestClient, headers: dict[str, str], files: list[tuple[str, bytes]]
) -> httpx.Response:
    return client.post(
        "/v1/batches",
        files=[("files", (name, data, "application/octet-stream")) for name, data in files],
        data={"module_id": "M-3"},
        headers=headers,
    )


def test_batch_answers_202_with_one_queued_job_per_file_in_order(
    client: TestClient, auth: dict[str, str]
) -> None:
    files = [
        ("a.png", factories.png8()),
        ("b.tif", factories.tiff16()),
        ("c.jpg", factories.jpeg_rgb()),
    ]

    response = post_batch(client, auth, files)

    assert response.status_code == 202, response.text
    body = response.json()
    assert set(body) == {"id", "jobs"}
    assert response.headers["location"] == f"/v1/batches/{body['id']}"
    assert len(body["jobs"]) == 3
    assert all(set(job) == JOB_KEYS and job["status"] == "queued" for job in body["jobs"])
    assert all(job["module_id"] == "M-3" for job in body["jobs"])

    factories.finish_job(_db(client), body["jobs"][1]["id"])
    again = client.get(f"/v1/batches/{body['id']}", headers=auth).json()

    assert again["id"] == body["id"]
    assert [job["id"] for job in again["jobs"]] == [job["id"] for job in body["jobs"]]
    assert [job["status"] for job in again["jobs"]] == ["queued", "succeeded", "queued"]
    # Each job of the batch is also readable on its own.
    job_id = body["jobs"][0]["id"]
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["id"] == job_id


def test_one_bad_file_refuses_the_whole_batch_naming_it(
    client: TestClient, auth: dict[str, str]
) -> None:
    files = [("good.png", factories.png8()), ("bad.png", b"not an image at all" * 4)]

    response = post_batch(client, auth, files)

    assert_error(response, 415, "unsupported_media_type")
    message = response.json()["error"]["message"]
    assert "files[1]" in message and "bad.png" in message
    assert job_count(_db(client)) == 0


def test_truncated_file_in_a_batch_refuses_it(client: TestClient, auth: dict[str, str]) -> None:
    files = [("a.png", factories.png8()), ("b.png", factories.truncated(factories.png8(256, 256)))]

    assert_error(post_batch(client, auth, files), 422, "corrupt_image")
    assert job_count(_db(client)) == 0


def test_too_many_files_is_refused(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_batch_files=2)
    auth = {"Authorization": f"Bearer {issue_token(_db(client), 'line-1')}"}

    response = post_batch(client, auth, [(f"{i}.png", factories.png8()) for i in range(3)])

    assert_error(response, 413, "too_many_files")
    assert job_count(_db(client)) == 0


def test_another_stations_batch_is_404(client: TestClient, auth: dict[str, str]) -> None:
    batch_id = post_batch(client, auth, [("a.png", factories.png8())]).json()["id"]
    other = {"Authorization": f"Bearer {issue_token(_db(client), 'line-2')}"}

    assert_error(client.get(f"/v1/batches/{batch_id}", headers=other), 404, "batch_not_found")
    assert_error(client.get("/v1/batches/nope", headers=auth), 404, "batch_not_found")


def test_batch_without_files_is_422(client: TestClient, auth: dict[str, str]) -> None:
    response = client.post("/v1/batches", data={"module_id": "M-1"}, headers=auth)
    assert_error(response, 422, "validation_error")
