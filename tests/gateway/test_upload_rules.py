"""Edge cases of the upload forms: names, keys, repeated parts, per-file ids, batch retries."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from db.models import FILENAME_LENGTH, Job
from db.session import session_scope
from tests.eldefect.images import premultiplied_la_tiff
from tests.gateway import factories
from tests.gateway.asgi import BOUNDARY, multipart
from tests.gateway.conftest import issue_token, job_count
from tests.gateway.test_jobs_api import _db, assert_error, submit


def _filename(database_url: str, job_id: str) -> str | None:
    with session_scope(database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.filename


def test_a_file_name_longer_than_its_column_is_accepted_and_stored_cut(
    make_client: Callable[..., TestClient], db_url: str
) -> None:
    client = make_client(database_url=db_url)
    auth = {"Authorization": f"Bearer {issue_token(db_url, 'line-1')}"}
    name = "cell-" + "x" * 1000 + ".png"

    response = submit(client, auth, filename=name)
    batch = client.post(
        "/v1/batches", files=[("files", (name, factories.png8(), "image/png"))], headers=auth
    )

    assert response.status_code == 202, response.text
    assert batch.status_code == 202, batch.text
    for job_id in (response.json()["id"], batch.json()["jobs"][0]["id"]):
        assert _filename(db_url, job_id) == name[:FILENAME_LENGTH]


def test_a_refusal_message_does_not_repeat_a_huge_file_name(
    client: TestClient, auth: dict[str, str]
) -> None:
    response = submit(client, auth, b"not an image", filename="y" * 900 + ".png")

    assert_error(response, 415, "unsupported_media_type")
    assert len(response.json()["error"]["message"]) < 400


def test_an_empty_idempotency_key_counts_as_none(client: TestClient, auth: dict[str, str]) -> None:
    first = submit(client, auth | {"Idempotency-Key": ""})
    second = submit(client, auth | {"Idempotency-Key": ""})

    assert (first.status_code, second.status_code) == (202, 202)
    assert first.json()["id"] != second.json()["id"]
    assert job_count(_db(client)) == 2


@pytest.mark.parametrize(
    ("second", "says"),
    [("file", "POST /v1/batches takes several"), ("module_id", "module_id and cell_id are text")],
    ids=["two_files", "module_id_as_a_file"],
)
def test_a_second_file_part_on_jobs_is_422_and_makes_no_job(
    client: TestClient, auth: dict[str, str], second: str, says: str
) -> None:
    response = client.post(
        "/v1/jobs",
        files=[
            ("file", ("a.png", factories.png8(), "image/png")),
            (second, ("b.png", factories.png8(), "image/png")),
        ],
        headers=auth,
    )

    assert_error(response, 422, "validation_error")
    assert says in response.json()["error"]["message"]
    assert job_count(_db(client)) == 0


def test_a_repeated_module_id_on_jobs_is_422(client: TestClient, auth: dict[str, str]) -> None:
    response = client.post(
        "/v1/jobs",
        files=[("file", ("a.png", factories.png8(), "image/png"))],
        data={"module_id": ["M-1", "M-2"]},
        headers=auth,
    )

    assert_error(response, 422, "validation_error")
    assert "module_id" in response.json()["error"]["message"]


def test_a_module_id_over_200_characters_is_422(client: TestClient, auth: dict[str, str]) -> None:
    assert_error(submit(client, auth, fields={"cell_id": "c" * 201}), 422, "validation_error")
    assert job_count(_db(client)) == 0


def test_an_unparseable_multipart_body_is_400(client: TestClient, auth: dict[str, str]) -> None:
    response = client.post(
        "/v1/jobs",
        content=b"--b\r\nContent-Disposition: form-data\r\n\r\nno name\r\n--b--\r\n",
        headers=auth | {"Content-Type": "multipart/form-data; boundary=b"},
    )

    assert_error(response, 400, "bad_request")


def test_a_text_field_that_is_not_utf8_is_400_not_stored_as_latin1(
    client: TestClient, auth: dict[str, str]
) -> None:
    body = (
        b'--b\r\nContent-Disposition: form-data; name="module_id"\r\n\r\nM-\xff\xfe\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + factories.png8() + b"\r\n--b--\r\n"
    )
    response = client.post(
        "/v1/jobs",
        content=body,
        headers=auth | {"Content-Type": "multipart/form-data; boundary=b"},
    )

    assert_error(response, 400, "bad_request")
    assert "'module_id' is not valid utf-8 text" in response.json()["error"]["message"]
    assert job_count(_db(client)) == 0


@pytest.mark.parametrize("route", ["/v1/jobs", "/v1/batches"])
@pytest.mark.parametrize("cut", ["in the file", "before the closing boundary", "empty"])
def test_a_multipart_body_cut_short_is_400_and_accepts_nothing(
    client: TestClient, auth: dict[str, str], route: str, cut: str
) -> None:
    whole = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + factories.png8() + b"\r\n--b--\r\n"
    )
    body = {
        "in the file": whole[: len(whole) // 2],
        "before the closing boundary": whole[: -len(b"--b--\r\n")],
        "empty": b"",
    }[cut]
    response = client.post(
        route, content=body, headers=auth | {"Content-Type": "multipart/form-data; boundary=b"}
    )

    assert_error(response, 400, "bad_request")
    assert "ended before its closing boundary" in response.json()["error"]["message"]
    assert job_count(_db(client)) == 0


def _batch(
    client: TestClient,
    auth: dict[str, str],
    count: int,
    data: dict[str, str | list[str]] | None = None,
    key: str | None = None,
):
    headers = auth | ({"Idempotency-Key": key} if key is not None else {})
    files = [("files", (f"{i}.png", factories.png8(), "image/png")) for i in range(count)]
    return client.post("/v1/batches", files=files, data=data or {}, headers=headers)


def test_batch_takes_module_and_cell_ids_per_file_in_file_order(
    client: TestClient, auth: dict[str, str]
) -> None:
    response = _batch(client, auth, 3, {"module_id": "M-9", "cell_id": ["C-01", "C-02", "C-03"]})

    assert response.status_code == 202, response.text
    ids = [(job["module_id"], job["cell_id"]) for job in response.json()["jobs"]]
    assert ids == [("M-9", "C-01"), ("M-9", "C-02"), ("M-9", "C-03")]


def test_batch_manifest_names_each_file_and_wins_over_the_fields(
    client: TestClient, auth: dict[str, str]
) -> None:
    manifest = [
        {"module_id": "M-1", "cell_id": "C-01"},
        {"cell_id": "C-02"},
        {"module_id": "M-3", "cell_id": None},
    ]

    response = _batch(client, auth, 3, {"module_id": "M-0", "manifest": json.dumps(manifest)})

    assert response.status_code == 202, response.text
    ids = [(job["module_id"], job["cell_id"]) for job in response.json()["jobs"]]
    assert ids == [("M-1", "C-01"), ("M-0", "C-02"), ("M-3", None)]


@pytest.mark.parametrize(
    ("data", "names"),
    [
        ({"cell_id": ["C-01", "C-02"]}, "cell_id"),  # 2 values for 3 files
        ({"manifest": json.dumps([{"cell_id": "C-01"}])}, "manifest"),  # 1 entry for 3 files
        ({"manifest": "not json"}, "manifest"),
        ({"manifest": json.dumps([{"cel_id": "typo"}] * 3)}, "manifest"),
        (
            {"manifest": json.dumps([{"module_id": "m" * 201}] * 3)},
            "manifest[0].module_id: String should have at most 200 characters",
        ),
        ({"manifest": json.dumps({"cell_id": "C-01"})}, "manifest: Input should be a valid list"),
        # Python's own parser gives up on deep nesting with a RecursionError, not a ValueError
        ({"manifest": "[" * 100_000 + "]" * 100_000}, "manifest: expected a JSON list"),
        ({"manifest": json.dumps([{"cell_id": "C-\ud800"}] * 3)}, "manifest[0].cell_id"),
    ],
    ids=[
        "count",
        "manifest_count",
        "manifest_json",
        "manifest_key",
        "manifest_length",
        "manifest_not_a_list",
        "manifest_nested_past_the_stack",
        "manifest_lone_surrogate",
    ],
)
def test_batch_ids_that_do_not_fit_the_files_are_422_and_make_no_job(
    client: TestClient, auth: dict[str, str], data: dict[str, str | list[str]], names: str
) -> None:
    response = _batch(client, auth, 3, data)

    assert_error(response, 422, "validation_error")
    assert names in response.json()["error"]["message"]
    assert job_count(_db(client)) == 0


def test_a_retried_batch_with_its_idempotency_key_returns_the_first_one(
    client: TestClient, auth: dict[str, str]
) -> None:
    first = _batch(client, auth, 2, key="shift-3/batch-17")
    again = _batch(client, auth, 3, key="shift-3/batch-17")  # whatever the retry carries
    other_key = _batch(client, auth, 1, key="shift-3/batch-18")
    other_station = _batch(
        client,
        {"Authorization": f"Bearer {issue_token(_db(client), 'line-2')}"},
        1,
        key="shift-3/batch-17",
    )

    assert first.status_code == 202, first.text
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert again.headers["location"] == f"/v1/batches/{first.json()['id']}"
    assert (other_key.status_code, other_station.status_code) == (202, 202)
    assert job_count(_db(client)) == 4


def _unnamed_parts(field: str, *images: bytes) -> tuple[bytes, dict[str, str]]:
    """A multipart body whose file parts carry no filename (RFC 7578 makes it optional)."""
    body = b"".join(multipart([(field, "", data) for data in images]))
    return body, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def test_a_file_part_without_a_filename_is_an_image_like_any_other(
    client: TestClient, auth: dict[str, str]
) -> None:
    body, headers = _unnamed_parts("file", factories.png8())
    response = client.post("/v1/jobs", content=body, headers=auth | headers)

    assert response.status_code == 202, response.text
    assert _filename(_db(client), response.json()["id"]) is None

    body, headers = _unnamed_parts("files", factories.png8(), factories.png8())
    batch = client.post("/v1/batches", content=body, headers=auth | headers)

    assert batch.status_code == 202, batch.text
    assert len(batch.json()["jobs"]) == 2


def test_text_sent_as_the_file_is_refused_as_not_an_image(
    client: TestClient, auth: dict[str, str]
) -> None:
    body, headers = _unnamed_parts("file", b"cell 4 looks cracked")
    response = client.post("/v1/jobs", content=body, headers=auth | headers)

    assert_error(response, 415, "unsupported_media_type")
    assert job_count(_db(client)) == 0


def test_a_tiff_whose_pixels_the_worker_cannot_convert_is_415_and_makes_no_job(
    client: TestClient, auth: dict[str, str]
) -> None:
    # Gray with premultiplied alpha: Pillow opens it ("La") but cannot convert it to gray.
    response = submit(client, auth, premultiplied_la_tiff(), filename="cell.tif")

    assert_error(response, 415, "unsupported_media_type")
    assert "pixel mode 'La'" in response.json()["error"]["message"]
    assert job_count(_db(client)) == 0
