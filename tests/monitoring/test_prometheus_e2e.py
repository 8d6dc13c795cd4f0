"""A real Prometheus scrapes a running gateway, worker and beat's exporter while jobs flow;
every query of the provisioned dashboards and every alert rule then returns series.

Embedded defaults (SQLite, the file-system broker) keep it self-contained; the exporter's
PostgreSQL reads are covered by test_collector.py. Scrapes and rule evaluations run every
second so the whole test stays well under a minute and a half.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from db.migrate import upgrade
from eldefect.settings import get_settings
from monitoring.reports import run_drift_check
from tests.monitoring.promql import (
    RULES_DIR,
    Expression,
    dashboard_expressions,
    rule_expressions,
    selectors,
    value_query,
)
from tests.workers.conftest import TinyRegistry
from tests.workers.factories import png_bytes
from tests.workers.harness import Proc, free_port, start_worker, wait_until
from workers.cli import eldefect_argv

pytestmark = pytest.mark.slow

RATE_WINDOW = "30s"  # what Grafana's $__rate_interval becomes with a 1 s scrape interval


def _get(url: str, **params: Any) -> Any:
    try:
        answer = httpx.get(url, params=params, timeout=5)
    except httpx.HTTPError:
        return None
    return (
        answer.json()
        if answer.headers.get("content-type", "").startswith("application/json")
        else answer
    )


def _healthy(url: str) -> bool:
    answer = _get(url)
    return answer is not None


def _write_config(path: Path, gateway: int, worker: int, exporter: int) -> None:
    def job(name: str, port: int) -> dict[str, Any]:
        return {"job_name": name, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}

    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in sorted(RULES_DIR.glob("*.yml"))],
        "scrape_configs": [
            job("eldefect-gateway", gateway),
            job("eldefect-worker", worker),
            job("eldefect-exporter", exporter),
        ],
    }
    path.write_text(yaml.safe_dump(config))


@pytest.fixture
def stack(
    served_model: TinyRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    ports = {name: free_port() for name in ("gateway", "worker", "exporter", "prometheus")}
    monkeypatch.setenv("ELDEFECT_GATEWAY_PORT", str(ports["gateway"]))
    monkeypatch.setenv("ELDEFECT_SWEEP_INTERVAL_S", "1")
    get_settings.cache_clear()
    upgrade(get_settings().database_url)
    procs: list[Proc] = []
    try:
        # Gateway and beat start while the worker loads torch and the model.
        exporter_env = {"ELDEFECT_EXPORTER_PORT": str(ports["exporter"])}
        procs.append(Proc(["gateway", "--no-migrate"], tmp_path / "gateway.log"))
        procs.append(Proc(["beat"], tmp_path / "beat.log", exporter_env))
        procs.append(start_worker(tmp_path, ELDEFECT_WORKER_METRICS_PORT=str(ports["worker"])))
        base = f"http://127.0.0.1:{ports['gateway']}"
        wait_until(lambda: _healthy(f"{base}/healthz"), 60, "the gateway", procs[0].text, procs)
        procs[1].wait_for("exporter metrics")
        yield {"base": base, "ports": ports, "procs": procs, "tmp": tmp_path}
    finally:
        for proc in reversed(procs):
            proc.stop(timeout=30)


@pytest.fixture
def prometheus(prometheus_binary: str, stack: dict[str, Any], tmp_path: Path) -> Iterator[str]:
    ports = stack["ports"]
    config = tmp_path / "prometheus.yml"
    _write_config(config, ports["gateway"], ports["worker"], ports["exporter"])
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            prometheus_binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{ports['prometheus']}"
    try:
        text = lambda: (tmp_path / "prometheus.log").read_text(errors="replace")  # noqa: E731
        wait_until(lambda: _healthy(f"{url}/-/ready"), 30, "Prometheus", text)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _series(prometheus: str, query: str) -> list[dict[str, Any]]:
    answer = _get(f"{prometheus}/api/v1/query", query=query)
    assert isinstance(answer, dict) and answer["status"] == "success", f"{query}: {answer}"
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def _submit_jobs(base: str) -> None:
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
    with httpx.Client(
        base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=40
    ) as http:
        assert httpx.get(f"{base}/v1/jobs/nope", timeout=5).status_code == 401  # an error answer
        ids = []
        for i in range(8):
            answer = http.post("/v1/jobs", files={"file": (f"c{i}.png", png_bytes(i), "image/png")})
            assert answer.status_code == 202, answer.text
            ids.append(answer.json()["id"])
        batch = http.post(
            "/v1/batches",
            files=[("files", (f"b{i}.png", png_bytes(40 + i), "image/png")) for i in range(4)],
        )
        assert batch.status_code == 202, batch.text
        ids += [job["id"] for job in batch.json()["jobs"]]
        for job_id in ids:
            job = http.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()
            assert job["status"] == "succeeded", job


def test_every_dashboard_query_and_alert_rule_returns_series(
    stack: dict[str, Any], prometheus: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = time.monotonic()
    logs = lambda: "\n".join(p.text()[-1500:] for p in stack["procs"])  # noqa: E731
    # Every target scraped before the jobs, so the counters' rise falls inside the window.
    wait_until(lambda: len(_series(prometheus, "up == 1")) == 3, 20, "all targets up", logs)
    _submit_jobs(stack["base"])
    # The drift task's own function over the jobs just served (a window this small would
    # only ever say insufficient_data, so the minimum comes down for the test).
    monkeypatch.setenv("ELDEFECT_DRIFT_MIN_N", "4")
    get_settings.cache_clear()
    report = run_drift_check(settings=get_settings())
    assert report is not None and report.n == 12, report
    assert {m.kind for m in report.measures} == {"feature", "class"}, report.measures
    wait_until(
        lambda: bool(_series(prometheus, f"eldefect_drift_window_jobs == {report.n}")),
        20,
        "the drift report in Prometheus (the exporter reads it at its next scrape)",
        logs,
    )
    wait_until(
        lambda: bool(
            _series(
                prometheus,
                f'increase(eldefect_worker_jobs_total{{outcome="succeeded"}}[{RATE_WINDOW}]) > 0',
            )
        ),
        30,
        "the finished jobs in Prometheus",
        logs,
    )
    assert _series(prometheus, 'eldefect_task_last_run_timestamp_seconds{task="sweep"} > 0'), (
        "the sweep ran (in the worker's housekeeping thread) and the exporter reads its task run"
    )

    expressions: list[Expression] = dashboard_expressions(RATE_WINDOW) + rule_expressions()
    assert len(expressions) > 40
    empty: list[str] = []
    for expression in expressions:
        if not _series(prometheus, value_query(expression)):
            empty.append(f"{expression.where}: {value_query(expression)}")
        for selector in selectors(expression.expr):
            if not _series(prometheus, selector):
                empty.append(f"{expression.where}: selector {selector}")
    assert not empty, "queries without series:\n" + "\n".join(empty)

    rules = _get(f"{prometheus}/api/v1/rules")["data"]["groups"]
    loaded = [rule for group in rules for rule in group["rules"]]
    assert len(loaded) == len(rule_expressions())
    assert all(rule["health"] == "ok" for rule in loaded), loaded
    firing = [rule["name"] for rule in loaded if rule.get("state") == "firing"]
    assert not firing, f"a healthy stack fires {firing}"
    assert time.monotonic() - started < 90
