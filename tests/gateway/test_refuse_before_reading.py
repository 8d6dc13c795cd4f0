"""Uploads cost an anonymous client nothing: the token and the declared size are checked
before the body is read, and a batch is held in memory one file at a time."""

from __future__ import annotations

import io
import logging
import threading
import tracemalloc
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from db.session import get_engine
from eldefect.settings import Settings
from gateway.app import create_app
from tests.gateway import factories
from tests.gateway.asgi import BOUNDARY, CHUNK, MULTIPART, call, multipart, part_head, zeros
from tests.gateway.conftest import issue_token, job_count

MiB = 1024 * 1024


def huge_upload(field: str, declared: int) -> list[bytes]:
    """A file part whose data would run to `declared` bytes, made lazily."""
    return [part_head(field, "big.png"), *zeros(declared)]


@pytest.mark.parametrize(
    ("path", "field", "declared"),
    [("/v1/jobs", "file", 20 * MiB), ("/v1/batches", "files", 200 * MiB)],
)
@pytest.mark.parametrize("token", [None, "not-a-token"])
def test_upload_without_a_valid_token_is_401_before_its_body_is_read(
    settings: Settings, path: str, field: str, declared: int, token: str | None
) -> None:
    headers = {"content-type": MULTIPART}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"

    answer = call(
        create_app(settings),
        path,
        headers=headers,
        body=huge_upload(field, declared),
        content_length=declared,
    )

    assert answer.status == 401, answer.body
    assert answer.json()["error"]["code"] == "unauthorized"
    assert answer.bytes_read <= 4096, f"read {answer.bytes_read} bytes of an anonymous body"
    assert job_count(settings.database_url) == 0


@pytest.mark.parametrize(
    ("path", "limit"),
    [("/v1/jobs", 21 * MiB), ("/v1/batches", 256 * MiB)],
)
def test_declared_length_past_the_limit_is_413_unread_even_with_a_token(
    settings: Settings, path: str, limit: int
) -> None:
    auth = {"authorization": f"Bearer {issue_token(settings.database_url, 'line-1')}"}

    answer = call(
        create_app(settings),
        path,
        headers=auth | {"content-type": MULTIPART},
        body=huge_upload("files", limit + 1),
        content_length=limit + 1,
    )

    assert answer.status == 413
    assert answer.json()["error"]["code"] == "file_too_large"
    assert answer.bytes_read == 0


@pytest.mark.parametrize("path", ["/v1/retrains", "/v1/jobs/0123/review", "/v1/jobs/0123"])
def test_any_other_route_refuses_a_declared_megabytes_body_unread_in_the_contract_shape(
    settings: Settings, path: str
) -> None:
    answer = call(
        create_app(settings),
        path,
        headers={"content-type": "application/json"},
        body=zeros(2 * MiB),
        content_length=2 * MiB,
        method="GET" if path == "/v1/jobs/0123" else "POST",
    )

    assert answer.status == 413, answer.body
    assert answer.json()["error"]["code"] == "file_too_large"
    assert answer.bytes_read == 0


@pytest.mark.parametrize("token", [None, "station"])
def test_an_operator_body_is_read_only_once_the_caller_is_an_operator(
    settings: Settings, token: str | None
) -> None:
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {issue_token(settings.database_url, 'line-1')}"

    answer = call(
        create_app(settings),
        "/v1/retrains",
        headers=headers,
        body=[b"{" * 1000],
        content_length=1000,
    )

    assert answer.status == (401 if token is None else 403), answer.body
    assert answer.bytes_read == 0


def test_batch_body_limit_is_its_own_setting_and_cuts_a_streamed_body(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(max_batch_bytes=MiB)
    settings = client.app.state.settings  # type: ignore[attr-defined]
    auth = {"authorization": f"Bearer {issue_token(settings.database_url, 'line-1')}"}

    answer = call(
        client.app,
        "/v1/batches",
        headers=auth | {"content-type": MULTIPART},
        body=huge_upload("files", 50 * MiB),  # no Content-Length: cut while streaming
    )

    assert answer.status == 413, answer.body
    assert answer.json()["error"]["code"] == "file_too_large"
    assert answer.bytes_read <= MiB + CHUNK
    assert job_count(settings.database_url) == 0


def test_too_many_files_stops_reading_at_the_first_file_past_the_limit(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(max_batch_files=2)
    settings = client.app.state.settings  # type: ignore[attr-defined]
    auth = {"authorization": f"Bearer {issue_token(settings.database_url, 'line-1')}"}
    small = factories.png8()
    files = [("files", f"{i}.png", small) for i in range(3)]

    answer = call(
        client.app,
        "/v1/batches",
        headers=auth | {"content-type": MULTIPART},
        body=[*multipart(files)[:-1], *zeros(20 * MiB)],  # a 4th, huge part never read
    )

    assert answer.status == 413
    assert answer.json()["error"]["code"] == "too_many_files"
    assert answer.bytes_read < 4 * len(small) + 2 * CHUNK


def test_idempotent_retry_is_answered_without_reading_its_body(
    settings: Settings,
) -> None:
    app = create_app(settings)
    auth = {"authorization": f"Bearer {issue_token(settings.database_url, 'line-1')}"}
    headers = auth | {"content-type": MULTIPART, "idempotency-key": "retry-1"}
    first = call(
        app,
        "/v1/batches",
        headers=headers,
        body=multipart([("files", "a.png", factories.png8())]),
    )
    assert first.status == 202, first.body

    again = call(app, "/v1/batches", headers=headers, body=huge_upload("files", 100 * MiB))

    assert again.status == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.bytes_read == 0


@pytest.mark.parametrize(("path", "field"), [("/v1/jobs", "file"), ("/v1/batches", "files")])
def test_a_keyed_upload_holds_no_database_connection_while_its_body_streams(
    settings: Settings, path: str, field: str
) -> None:
    # The key is looked up before the body is read; a connection held from there through a
    # slow station link would let a few dozen such uploads empty the pool for everyone.
    app = create_app(settings)
    auth = {"authorization": f"Bearer {issue_token(settings.database_url, 'line-1')}"}
    pool = get_engine(settings.database_url).pool
    checked_out: list[int] = []

    def body() -> Iterator[bytes]:
        yield part_head(field, "a.png")
        checked_out.append(pool.checkedout())  # type: ignore[attr-defined]
        yield factories.png8()
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    headers = auth | {"content-type": MULTIPART, "idempotency-key": "slow-link-1"}
    answer = call(app, path, headers=headers, body=body())

    assert answer.status == 202, answer.body
    assert checked_out == [0]


@pytest.mark.parametrize(("path", "field"), [("/v1/jobs", "file"), ("/v1/batches", "files")])
def test_a_client_gone_mid_upload_is_no_server_error(
    settings: Settings, path: str, field: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(settings)
    auth = {"authorization": f"Bearer {issue_token(settings.database_url, 'line-1')}"}
    half = factories.png8()[:100]
    headers = auth | {"content-type": MULTIPART}

    with caplog.at_level(logging.INFO):
        answer = call(app, path, headers=headers, body=[part_head(field, "a.png"), half],
                      disconnect=True)  # fmt: skip

    # A dropped station link is logged, not reported as a server failure (500, ERROR).
    assert answer.status == 499
    assert answer.json()["error"]["code"] == "client_disconnected"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "client disconnected" in caplog.text
    assert job_count(settings.database_url) == 0


def noise_png16(seed: int, size: int = 720) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 65535, (size, size), dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def test_a_batch_holds_one_file_in_memory_not_all_of_them(settings: Settings) -> None:
    app = create_app(settings)
    auth = {"authorization": f"Bearer {issue_token(settings.database_url, 'line-1')}"}
    images = [noise_png16(seed) for seed in range(3)]
    count = 24
    body = multipart([("files", f"{i}.png", images[i % 3]) for i in range(count)])
    total = sum(len(piece) for piece in body)
    largest = max(len(image) for image in images)
    # One small batch first: imports on first use (Pillow plugins, Celery) are not the batch's.
    warm = call(app, "/v1/batches", headers=auth | {"content-type": MULTIPART}, body=body[-4:])
    assert warm.status == 202, warm.body
    # An earlier test's app may still import MLflow in its warm-up thread: not ours to count.
    for thread in threading.enumerate():
        if thread.name == "eldefect-warm-up":
            thread.join()

    tracemalloc.start()
    try:
        answer = call(app, "/v1/batches", headers=auth | {"content-type": MULTIPART}, body=body)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert answer.status == 202, answer.body
    assert len(answer.json()["jobs"]) == count
    # Measured: 2.3 MiB for a 23.8 MiB batch of 24 files (about 1 MiB each).
    print(f"batch body {total / MiB:.1f} MiB, peak Python allocations {peak / MiB:.1f} MiB")
    assert peak < 6 * largest, f"peak {peak / MiB:.1f} MiB for a {total / MiB:.1f} MiB batch"
    assert total > 20 * largest  # the bound above is far below holding the batch
