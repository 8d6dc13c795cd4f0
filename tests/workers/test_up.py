"""`eldefect up` end to end: a station submits over HTTP with a token, results arrive.

Runs on the embedded defaults (SQLite, filesystem broker) and on PostgreSQL + Redis.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest

from eldefect.settings import get_settings
from tests.workers.conftest import TinyRegistry
from tests.workers.factories import png_bytes
from tests.workers.harness import Proc, free_port, wait_until
from workers.cli import eldefect_argv

pytestmark = pytest.mark.slow


@pytest.fixture(
    params=["embedded", pytest.param("services", marks=[pytest.mark.postgres, pytest.mark.redis])]
)
def stack_env(
    request: pytest.FixtureRequest, served_model: TinyRegistry, monkeypatch: pytest.MonkeyPatch
) -> int:
    """Settings for `eldefect up` in this test; returns the gateway port."""
    port = free_port()
    monkeypatch.setenv("ELDEFECT_GATEWAY_PORT", str(port))
    if request.param == "services":
        monkeypatch.setenv("ELDEFECT_DATABASE_URL", request.getfixturevalue("postgres_url"))
        monkeypatch.setenv("ELDEFECT_BROKER_URL", request.getfixturevalue("redis_url"))
    get_settings.cache_clear()
    return port


def test_up_serves_a_station_over_http_and_stops_cleanly(stack_env: int, tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{stack_env}"
    up = Proc(["up"], tmp_path / "up.log")
    try:
        wait_until(lambda: _healthy(base), 90, "the gateway", up.text, [up])
        token = (
            subprocess.run(
                [*eldefect_argv(), "token", "create", "--station", "line-1"],
                check=True,
                capture_output=True,
                text=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=base, headers=headers, timeout=40) as http:
            ids = []
            for i in range(12):
                answer = http.post(
                    "/v1/jobs", files={"file": (f"cell{i}.png", png_bytes(i), "image/png")}
                )
                assert answer.status_code == 202, answer.text
                ids.append(answer.json()["id"])
            batch = http.post(
                "/v1/batches",
                files=[("files", (f"b{i}.png", png_bytes(50 + i), "image/png")) for i in range(4)],
            )
            assert batch.status_code == 202, batch.text
            ids += [job["id"] for job in batch.json()["jobs"]]
            deadline = time.monotonic() + 90
            jobs = {}
            for job_id in ids:
                while time.monotonic() < deadline:
                    job = http.get(f"/v1/jobs/{job_id}", params={"wait": 20}).json()
                    if job["status"] in ("succeeded", "failed"):
                        jobs[job_id] = job
                        break
            assert len(jobs) == len(ids), up.text()[-3000:]
        assert {job["status"] for job in jobs.values()} == {"succeeded"}
        for job in jobs.values():
            assert job["result"]["model"] == {"name": "el_defect_classifier", "version": "1"}
            assert set(job["result"]["probabilities"]) == set(job["result"]["thresholds"])
    finally:
        code = up.stop(timeout=60)
    text = up.text()
    assert code == 0, text[-3000:]
    assert "up      | stopped" in text
    for name in ("gateway", "worker", "beat"):
        assert f"{name} " in text and " | " in text  # each child's lines carry its name


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
