"""The whole HTTP flow on a real PostgreSQL database (and real Redis as the broker)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from db.migrate import upgrade
from tests.gateway import factories
from tests.gateway.conftest import issue_token, job_count
from tests.gateway.test_jobs_api import BAD_INPUTS, ISO_Z, JOB_KEYS, assert_error
from tests.gateway.test_operators_api import assert_paging_reads_every_review_once

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_client(make_client: Callable[..., TestClient], postgres_url: str) -> TestClient:
    upgrade(postgres_url)
    return make_client(database_url=postgres_url)


def test_submit_wait_and_read_on_postgres(pg_client: TestClient, postgres_url: str) -> None:
    auth = {"Authorization": f"Bearer {issue_token(postgres_url, 'line-1')}"}
    other = {"Authorization": f"Bearer {issue_token(postgres_url, 'line-2')}"}

    response = pg_client.post(
        "/v1/jobs",
        files={"file": ("cell.tif", factories.tiff16(), "image/tiff")},
        data={"module_id": "M-17", "cell_id": "C-04"},
        headers=auth | {"Idempotency-Key": "k-1"},
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert response.headers["location"] == f"/v1/jobs/{job_id}"

    replay = pg_client.post(
        "/v1/jobs",
        files={"file": ("cell.tif", factories.tiff16(), "image/tiff")},
        headers=auth | {"Idempotency-Key": "k-1"},
    )
    assert (replay.status_code, replay.json()["id"]) == (200, job_id)

    timer = threading.Timer(0.3, factories.finish_job, args=(postgres_url, job_id))
    timer.start()
    job = pg_client.get(f"/v1/jobs/{job_id}?wait=15", headers=auth).json()
    timer.join()

    assert set(job) == JOB_KEYS
    assert job["status"] == "succeeded"
    assert ISO_Z.match(job["created_at"]) and ISO_Z.match(job["finished_at"])
    assert job["result"]["model"] == {"name": "el_defect_classifier", "version": "3"}
    assert_error(pg_client.get(f"/v1/jobs/{job_id}", headers=other), 404, "job_not_found")

    batch = pg_client.post(
        "/v1/batches",
        files=[("files", ("a.png", factories.png16())), ("files", ("b.bmp", factories.bmp()))],
        headers=auth,
    )
    assert batch.status_code == 202, batch.text
    again = pg_client.get(f"/v1/batches/{batch.json()['id']}", headers=auth).json()
    assert [j["id"] for j in again["jobs"]] == [j["id"] for j in batch.json()["jobs"]]
    assert job_count(postgres_url) == 3


@pytest.mark.parametrize("name", ["not_an_image", "truncated_png", "declares_30000x30000"])
def test_bad_input_makes_no_job_on_postgres(
    pg_client: TestClient, postgres_url: str, name: str
) -> None:
    auth = {"Authorization": f"Bearer {issue_token(postgres_url, 'line-1')}"}
    data, status, code = BAD_INPUTS[name]

    response = pg_client.post("/v1/jobs", files={"file": ("x.png", data)}, headers=auth)

    assert_error(response, status, code)
    assert job_count(postgres_url) == 0


def test_concurrent_submissions_with_one_key_make_one_job(
    pg_client: TestClient, postgres_url: str
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    auth = {"Authorization": f"Bearer {issue_token(postgres_url, 'line-1')}"}

    def post(_: int) -> tuple[int, str]:
        response = pg_client.post(
            "/v1/jobs",
            files={"file": ("a.png", factories.png8())},
            headers=auth | {"Idempotency-Key": "same"},
        )
        return response.status_code, response.json()["id"]

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(post, range(8)))

    assert len({job_id for _, job_id in answers}) == 1
    assert sorted(status for status, _ in answers).count(202) == 1
    assert job_count(postgres_url) == 1


def test_nul_characters_are_refused_with_the_field_named_not_a_500(
    pg_client: TestClient, postgres_url: str
) -> None:
    """PostgreSQL text cannot hold NUL: every way one can arrive gets a 4xx that says so."""
    auth = {"Authorization": f"Bearer {issue_token(postgres_url, 'line-1')}"}
    operator = {"Authorization": f"Bearer {issue_token(postgres_url, 'lab', role='operator')}"}
    png = factories.png8()

    refused = pg_client.post(
        "/v1/jobs", files={"file": ("a.png", png)}, data={"module_id": "M\x001"}, headers=auth
    )
    assert_error(refused, 422, "validation_error")
    assert "module_id" in refused.json()["error"]["message"]
    manifest = '[{"cell_id": "C\\u00001"}]'
    refused = pg_client.post(
        "/v1/batches", files=[("files", ("a.png", png))], data={"manifest": manifest}, headers=auth
    )
    assert_error(refused, 422, "validation_error")
    assert "manifest[0].cell_id" in refused.json()["error"]["message"]
    assert job_count(postgres_url) == 0

    # A file name is only shown to people: kept, with the NUL replaced.
    accepted = pg_client.post("/v1/jobs", files={"file": ("a\x00.png", png)}, headers=auth)
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]

    for path in (f"/v1/jobs/{job_id}%00", "/v1/jobs/x%00?wait=1", "/v1/batches/x%00"):
        assert pg_client.get(path, headers=auth).status_code == 404, path

    factories.finish_job(postgres_url, job_id)
    comment = pg_client.post(
        f"/v1/jobs/{job_id}/review", json={"defects": [], "comment": "ok\x00"}, headers=operator
    )
    assert_error(comment, 422, "validation_error")
    assert "comment" in comment.json()["error"]["message"]


def test_reviews_page_on_postgres(pg_client: TestClient, postgres_url: str) -> None:
    """timestamptz keeps the microseconds the cursor hands out."""
    auth = {"Authorization": f"Bearer {issue_token(postgres_url, 'line-1')}"}
    operator = {"Authorization": f"Bearer {issue_token(postgres_url, 'lab', role='operator')}"}
    assert_paging_reads_every_review_once(pg_client, auth, operator)
