"""Alert rules, dashboards and the Prometheus config: valid, tested, and naming real metrics.

`promtool` comes from the Debian package `prometheus` (.ci/run installs it); the end-to-end
proof that every query returns data is tests/monitoring/test_prometheus_e2e.py.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from monitoring import dashboards
from tests.monitoring.promql import (
    DASHBOARD_DIR,
    PROMETHEUS_DIR,
    ROOT,
    RULE_TESTS_DIR,
    dashboard_expressions,
    rule_expressions,
    rules,
    selectors,
    value_query,
)


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def defined_series() -> set[str]:
    """Every series name our processes can export (histograms and counters with suffixes)."""
    from prometheus_client.metrics import MetricWrapperBase

    from gateway import metrics as gateway_metrics
    from monitoring import metrics as worker_metrics
    from monitoring.collector import FAMILIES
    from monitoring.retrain_metrics import METRIC as RETRAIN_TRIGGERS

    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    names = set(FAMILIES) | {"up", f"{RETRAIN_TRIGGERS}_total"}
    for module in (gateway_metrics, worker_metrics):
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                for family in value.describe():
                    names.update(family.name + s for s in suffixes[family.type])
    return names


def test_promtool_accepts_the_compose_config_with_its_rule_files(promtool: str) -> None:
    out = _run([promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml")])
    assert out.returncode == 0, out.stdout + out.stderr
    rule_files = list((PROMETHEUS_DIR / "rules").glob("*.yml"))
    assert f"SUCCESS: {len(rule_files)} rule files found" in out.stdout, out.stdout


@pytest.mark.parametrize("test_file", sorted(p.name for p in RULE_TESTS_DIR.glob("*.yml")))
def test_promtool_rule_unit_tests_pass(promtool: str, test_file: str) -> None:
    out = _run([promtool, "test", "rules", str(RULE_TESTS_DIR / test_file)])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_alert_has_a_unit_test_that_fires_it_and_one_that_does_not() -> None:
    fired: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS_DIR.glob("*.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    alerts = {str(rule["alert"]) for _, rule in rules() if "alert" in rule}
    assert alerts, "no alert rules found"
    assert alerts <= fired, f"alerts never tested firing: {sorted(alerts - fired)}"
    assert alerts <= silent, f"alerts never tested staying silent: {sorted(alerts - silent)}"


def test_alerts_compare_a_value_with_a_threshold_and_link_their_runbook() -> None:
    doc = (ROOT / "docs" / "observability.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in doc.splitlines()
        if line.startswith("#")
    }
    for expression in rule_expressions():
        value_query(expression)  # asserts the `<value> <comparison> <threshold>` form
    for _, rule in rules():
        if "alert" in rule:
            annotations = rule["annotations"]
            assert isinstance(annotations, dict)
            runbook = str(annotations["runbook"])
            page, _, anchor = runbook.partition("#")
            assert page == "docs/observability.md" and anchor in anchors, runbook
            assert rule["labels"]["severity"] in ("warning", "critical")  # type: ignore[index]


def test_dashboards_and_rules_query_only_metrics_we_define() -> None:
    defined = defined_series()
    for expression in dashboard_expressions("5m") + rule_expressions():
        for selector in selectors(expression.expr):
            name = selector.split("{", 1)[0]
            assert name in defined, f"{expression.where}: {name} is not exported by anything"


def test_promtool_parses_every_dashboard_query(promtool: str, tmp_path: Path) -> None:
    records = [
        {"record": f"dashboard:query_{i}", "expr": e.expr}
        for i, e in enumerate(dashboard_expressions("5m"))
    ]
    rules_file = tmp_path / "dashboard_rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": records}]}))
    out = _run([promtool, "check", "rules", str(rules_file)])
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_dashboard_files_are_what_monitoring_dashboards_writes() -> None:
    rendered = dashboards.rendered()
    on_disk = {p.name: p.read_text() for p in DASHBOARD_DIR.glob("*.json")}
    assert on_disk == rendered, "run `python -m monitoring.dashboards` and commit the files"


def test_the_dashboards_cover_service_model_and_drift() -> None:
    queries: dict[str, str] = {}
    for e in dashboard_expressions("5m"):
        file = e.where.split(":")[0]
        queries[file] = queries.get(file, "") + e.expr + "\n"
    service, model, drift = (
        queries[f] for f in ("eldefect.json", "eldefect-model.json", "eldefect-drift.json")
    )
    for needle in (
        "eldefect_worker_jobs_total",
        "eldefect_queue_jobs",
        "eldefect_worker_queue_wait_seconds_bucket",
        "histogram_quantile(0.99",
        "by (code)",
        "eldefect_worker_batch_size",
        "eldefect_gateway_requests_total",
    ):
        assert needle in service, needle
    for needle in ("eldefect_worker_model_info", "model_loads_total", "predictions_positive_total"):
        assert needle in model, needle
    for needle in (
        "eldefect_drift_z{",
        "eldefect_drift_effect{",
        "eldefect_drift_verdict",
        "eldefect_drift_window_jobs",
        "eldefect_drift_z_threshold",
        "eldefect_drift_effect_threshold",
    ):
        assert needle in drift, needle
