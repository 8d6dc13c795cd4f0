"""The soak script (bench/soak.py), shortened for CI: 200 jobs from 8 stations, a worker
SIGKILLed midway, on PostgreSQL and Redis. The full run's figures are in docs/serving.md."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.workers.conftest import TinyRegistry

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

SOAK = Path(__file__).parents[2] / "bench" / "soak.py"


def test_short_soak_loses_and_doubles_nothing_across_a_worker_kill(
    served_model: TinyRegistry, postgres_url: str, redis_url: str
) -> None:
    env = {**os.environ, "ELDEFECT_DATABASE_URL": postgres_url, "ELDEFECT_BROKER_URL": redis_url}
    done = subprocess.run(
        [
            sys.executable,
            str(SOAK),
            "--n",
            "200",
            "--stations",
            "8",
            "--timeout",
            "110",
            "--lease-s",
            "10",
            "--max-rss-growth",
            "0.25",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "accepted 200 of 200 uploads" in done.stdout
    assert "lost 0 (API: 0 not succeeded), doubled 0" in done.stdout
