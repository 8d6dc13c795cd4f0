"""Operator endpoints: roles, reviews (validation, supersede), drift and retrain listings."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import httpx
import pytest
from fastapi.testclient import TestClient

from db import retrains
from db.models import DriftMeasure, DriftReport, DriftVerdict
from db.session import session_scope
from tests.gateway import factories
from tests.gateway.conftest import issue_token
from tests.gateway.test_jobs_api import ISO_Z, _db, assert_error, submit

OPERATOR_GETS = ["/v1/reviews", "/v1/drift", "/v1/retrains"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def operator(client: TestClient) -> dict[str, str]:
    return bearer(issue_token(_db(client), "quality-lab", role="operator"))


def succeeded_job(client: TestClient, headers: dict[str, str]) -> str:
    job_id = str(submit(client, headers).json()["id"])
    factories.finish_job(_db(client), job_id)  # labels: crack, finger
    return job_id


def review(
    client: TestClient, headers: dict[str, str], job_id: str, defects: list[str], **extra: object
) -> httpx.Response:
    return client.post(
        f"/v1/jobs/{job_id}/review", json={"defects": defects, **extra}, headers=headers
    )


@pytest.mark.parametrize("path", OPERATOR_GETS)
def test_station_tokens_get_403_on_operator_endpoints(
    client: TestClient, auth: dict[str, str], path: str
) -> None:
    assert_error(client.get(path, headers=auth), 403, "forbidden")


def test_station_tokens_may_not_review_or_start_a_retrain(
    client: TestClient, auth: dict[str, str]
) -> None:
    job_id = succeeded_job(client, auth)
    assert_error(review(client, auth, job_id, ["crack"]), 403, "forbidden")
    assert_error(client.post("/v1/retrains", json={"reason": "x"}, headers=auth), 403, "forbidden")


@pytest.mark.parametrize("path", OPERATOR_GETS)
def test_operator_endpoints_need_a_token(client: TestClient, path: str) -> None:
    assert_error(client.get(path), 401, "unauthorized")


def test_operator_reads_every_stations_jobs_while_stations_still_get_404_across(
    client: TestClient, auth: dict[str, str], operator: dict[str, str]
) -> None:
    other = bearer(issue_token(_db(client), "line-2"))
    job_id = succeeded_job(client, auth)

    assert client.get(f"/v1/jobs/{job_id}", headers=operator).json()["id"] == job_id
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).status_code == 200
    assert_error(client.get(f"/v1/jobs/{job_id}", headers=other), 404, "job_not_found")

    batch = client.post("/v1/batches", files=[("files", ("a.png", factories.png8()))], headers=auth)
    path = f"/v1/batches/{batch.json()['id']}"
    assert client.get(path, headers=operator).json()["jobs"] == batch.json()["jobs"]
    assert_error(client.get(path, headers=other), 404, "batch_not_found")


def test_review_answers_201_and_the_job_shows_the_latest_review(
    client: TestClient, auth: dict[str, str], operator: dict[str, str]
) -> None:
    job_id = succeeded_job(client, auth)
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["review"] is None

    first = review(client, operator, job_id, ["crack", "finger"], comment="two")
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["defects"] == ["crack", "finger"] and body["comment"] == "two"
    assert body["reviewer"] == "quality-lab" and ISO_Z.match(body["reviewed_at"])
    assert body["model"] == {"name": "el_defect_classifier", "version": "3"}

    second = review(client, operator, job_id, [], comment="no defect after all")
    assert second.status_code == 201

    shown = client.get(f"/v1/jobs/{job_id}", headers=auth).json()["review"]
    assert shown["defects"] == [] and shown["comment"] == "no defect after all"
    listed = client.get("/v1/reviews", headers=operator).json()["reviews"]
    assert [r["comment"] for r in listed] == ["no defect after all", "two"]  # both kept


def test_review_with_unknown_labels_is_422_naming_them(
    client: TestClient, auth: dict[str, str], operator: dict[str, str]
) -> None:
    job_id = succeeded_job(client, auth)
    response = review(client, operator, job_id, ["crack", "hot_spot", "bogus"])
    assert_error(response, 422, "unknown_labels")
    message = response.json()["error"]["message"]
    assert "hot_spot" in message and "bogus" in message and "'crack'" in message.split(":")[-1]
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["review"] is None


def test_review_of_a_job_that_has_not_succeeded_is_409(
    client: TestClient, auth: dict[str, str], operator: dict[str, str]
) -> None:
    queued = submit(client, auth).json()["id"]
    assert_error(review(client, operator, queued, ["crack"]), 409, "job_not_succeeded")
    failed = submit(client, auth).json()["id"]
    factories.finish_job(_db(client), failed, fail=True)
    assert_error(review(client, operator, failed, []), 409, "job_not_succeeded")


def test_review_of_an_unknown_job_is_404_and_a_bad_body_422(
    client: TestClient, auth: dict[str, str], operator: dict[str, str]
) -> None:
    assert_error(review(client, operator, "f" * 32, ["crack"]), 404, "job_not_found")
    job_id = succeeded_job(client, auth)
    bad = client.post(f"/v1/jobs/{job_id}/review", json={"labels": ["crack"]}, headers=operator)
    assert_error(bad, 422, "validation_error")


def test_free_text_with_nul_is_refused_naming_the_field(
    client: TestClient, auth: dict[str, str], operator: dict[str, str]
) -> None:
    """SQLite would store a NUL that PostgreSQL refuses: refused on both, before storing."""
    job_id = succeeded_job(client, auth)
    refused = review(client, operator, job_id, [], comment="ok\x00")
    assert_error(refused, 422, "validation_error")
    assert refused.json()["error"]["message"].startswith("comment: ")
    assert "NUL" in refused.json()["error"]["message"]
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["review"] is None
    refused = client.post("/v1/retrains", json={"reason": "new\x00camera"}, headers=operator)
    assert_error(refused, 422, "validation_error")
    assert refused.json()["error"]["message"].startswith("reason: ")
    assert client.get("/v1/retrains", headers=operator).json()["retrains"] == []


def test_free_text_with_a_lone_surrogate_is_422_and_stores_nothing(
    client: TestClient, auth: dict[str, str], operator: dict[str, str]
) -> None:
    """JSON may spell "\\ud800", which no database driver can encode: a 422, not a 500."""
    job_id = succeeded_job(client, auth)
    body = json.dumps({"defects": [], "comment": "ok \ud800"})  # ASCII, as "\\ud800"
    refused = client.post(f"/v1/jobs/{job_id}/review", content=body, headers=operator)
    assert_error(refused, 422, "validation_error")
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["review"] is None
    body = json.dumps({"reason": "\udfff"})
    refused = client.post("/v1/retrains", content=body, headers=operator)
    assert_error(refused, 422, "validation_error")
    assert client.get("/v1/retrains", headers=operator).json()["retrains"] == []


@pytest.mark.parametrize(
    ("body", "says"),
    [(b"{", "body: Invalid JSON"), (b"", "body: Invalid JSON"), (b"[1]", "body: Input should be")],
)
def test_a_body_that_is_not_a_json_object_is_422_naming_the_body(
    client: TestClient, auth: dict[str, str], operator: dict[str, str], body: bytes, says: str
) -> None:
    job_id = succeeded_job(client, auth)
    for path in (f"/v1/jobs/{job_id}/review", "/v1/retrains"):
        refused = client.post(path, content=body, headers=operator)
        assert_error(refused, 422, "validation_error")
        assert refused.json()["error"]["message"].startswith(says), refused.json()


def test_the_token_is_checked_before_a_json_body_is_read(
    client: TestClient, auth: dict[str, str]
) -> None:
    """A malformed body from a station or from nobody is still a 403 or a 401."""
    job_id = succeeded_job(client, auth)
    for path in (f"/v1/jobs/{job_id}/review", "/v1/retrains"):
        assert_error(client.post(path, content=b"{", headers=auth), 403, "forbidden")
        assert_error(client.post(path, content=b"{"), 401, "unauthorized")


@pytest.mark.parametrize("since", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_a_since_outside_utc_times_is_422(
    client: TestClient, operator: dict[str, str], since: str
) -> None:
    refused = client.get("/v1/reviews", params={"since": since}, headers=operator)
    assert_error(refused, 422, "validation_error")
    assert refused.json()["error"]["message"].startswith("query.since: ")


def test_reviews_since_and_limit(
    client: TestClient, auth: dict[str, str], operator: dict[str, str]
) -> None:
    jobs = [succeeded_job(client, auth) for _ in range(3)]
    for job_id in jobs:
        assert review(client, operator, job_id, ["crack"]).status_code == 201
    assert len(client.get("/v1/reviews?limit=2", headers=operator).json()["reviews"]) == 2
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    assert client.get("/v1/reviews", params={"since": future}, headers=operator).json() == {
        "reviews": []
    }
    # The same instant with another offset means the same (SQLite compares stored UTC text).
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    for offset in (timedelta(hours=2), timedelta(hours=-5)):
        since = an_hour_ago.astimezone(timezone(offset)).isoformat()
        listed = client.get("/v1/reviews", params={"since": since}, headers=operator).json()
        assert len(listed["reviews"]) == 3, since
        since = (an_hour_ago + timedelta(hours=2)).astimezone(timezone(offset)).isoformat()
        assert client.get("/v1/reviews", params={"since": since}, headers=operator).json() == {
            "reviews": []
        }
    assert_error(client.get("/v1/reviews?limit=0", headers=operator), 422, "validation_error")


def test_empty_query_values_count_as_absent_as_the_contract_writes_them(
    client: TestClient, auth: dict[str, str], operator: dict[str, str]
) -> None:
    job_id = succeeded_job(client, auth)
    assert review(client, operator, job_id, ["crack"]).status_code == 201

    listed = client.get("/v1/reviews?since=&limit=", headers=operator)
    drift = client.get("/v1/drift?limit=", headers=operator)
    job = client.get(f"/v1/jobs/{job_id}?wait=", headers=auth)

    assert listed.status_code == 200, listed.text
    assert [r["job_id"] for r in listed.json()["reviews"]] == [job_id]
    assert drift.status_code == 200, drift.text
    assert job.status_code == 200 and job.json()["id"] == job_id
    assert_error(
        client.get("/v1/reviews?since=&limit=x", headers=operator), 422, "validation_error"
    )


def test_paging_with_since_reads_every_review_once_in_order(
    client: TestClient, auth: dict[str, str], operator: dict[str, str]
) -> None:
    assert_paging_reads_every_review_once(client, auth, operator)


def assert_paging_reads_every_review_once(
    client: TestClient, auth: dict[str, str], operator: dict[str, str]
) -> None:
    """Five reviews within a second or so, read two at a time: none skipped, none twice."""
    jobs = [succeeded_job(client, auth) for _ in range(5)]
    made = [review(client, operator, job_id, ["crack"]).json()["id"] for job_id in jobs]
    newest = client.get("/v1/reviews?limit=2", headers=operator).json()["reviews"]
    assert [r["id"] for r in newest] == made[:-3:-1]  # without since: the latest, newest first

    read: list[int] = []
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    for _ in range(5):
        page = client.get(
            "/v1/reviews", params={"since": since, "limit": 2}, headers=operator
        ).json()["reviews"]
        if not page:
            break
        read += [r["id"] for r in page]
        since = page[-1]["reviewed_at"]
    assert read == made


def test_drift_lists_the_latest_reports_with_their_measures(
    client: TestClient, operator: dict[str, str]
) -> None:
    with session_scope(_db(client)) as session:
        for i, verdict in enumerate([DriftVerdict.ok, DriftVerdict.drift, DriftVerdict.drift]):
            report = DriftReport(
                model_name="el_defect_classifier",
                model_version="1",
                n=100 + i,
                verdict=verdict,
                thresholds={"z": 4.0},
                notes=[],
            )
            report.measures = [
                DriftMeasure(
                    kind="feature",
                    name="mean",
                    window_value=0.4,
                    reference_value=0.5,
                    z=-6.0,
                    effect=-0.8,
                    drifted=verdict == DriftVerdict.drift,
                )
            ]
            session.add(report)
    body = client.get("/v1/drift?limit=2", headers=operator).json()
    assert [r["n"] for r in body["reports"]] == [102, 101]
    assert body["reports"][0]["verdict"] == "drift"
    assert body["reports"][0]["measures"][0]["name"] == "mean"


def test_manual_retrain_starts_one_and_a_second_is_409(
    client: TestClient, operator: dict[str, str]
) -> None:
    first = client.post("/v1/retrains", json={"reason": "new line camera"}, headers=operator)
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["reason"] == "manual" and body["status"] == "queued"
    assert body["note"] == "new line camera" and body["requested_by"] == "api:quality-lab"

    again = client.post("/v1/retrains", json={"reason": "again"}, headers=operator)
    assert_error(again, 409, "retrain_in_progress")
    assert str(body["id"]) in again.json()["error"]["message"]

    listed = client.get("/v1/retrains", headers=operator).json()["retrains"]
    assert [t["id"] for t in listed] == [body["id"]]
    with session_scope(_db(client)) as session:
        retrains.fail_trigger(session=session, trigger_id=body["id"], error="test")
    assert client.post("/v1/retrains", json={"reason": "now"}, headers=operator).status_code == 201


def test_manual_retrain_needs_a_reason(client: TestClient, operator: dict[str, str]) -> None:
    assert_error(client.post("/v1/retrains", json={}, headers=operator), 422, "validation_error")
    assert_error(
        client.post("/v1/retrains", json={"reason": ""}, headers=operator), 422, "validation_error"
    )
