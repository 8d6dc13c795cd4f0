"""The provisioned Grafana dashboards (service, model, drift), written from one description.

`python -m monitoring.dashboards` rewrites compose/grafana/dashboards/*.json; a test checks the
files are what this module writes, and another runs every query on a real Prometheus.
docs/observability.md describes each panel.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
RATE = "$__rate_interval"
DASHBOARD_DIR = Path(__file__).resolve().parents[1] / "compose" / "grafana" / "dashboards"
# Series whose legend says "threshold" are drawn as dashed red lines (drift panels).
THRESHOLD = "threshold"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    queries: list[Query]
    unit: str = "short"
    kind: str = "timeseries"  # or "stat"
    width: int = 12
    height: int = 8
    extra: dict[str, Any] = field(default_factory=dict)


def _quantiles(metric: str, by: str = "") -> list[Query]:
    group = f"le, {by}" if by else "le"
    suffix = f" {{{{{by}}}}}" if by else ""
    return [
        Query(
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket[{RATE}])))",
            f"p{round(q * 100)}{suffix}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


def _threshold_lines(metric: str, kind: str) -> list[Query]:
    selected = f'{metric}{{kind="{kind}"}}'
    return [
        Query(f"max({selected})", f"+{THRESHOLD}"),
        Query(f"-max({selected})", f"-{THRESHOLD}"),
    ]


SERVICE = [
    Panel(
        "Jobs finished per second",
        "Throughput: jobs the workers ended, by outcome (eldefect_worker_jobs_total).",
        [Query(f"sum by (outcome) (rate(eldefect_worker_jobs_total[{RATE}]))", "{{outcome}}")],
        unit="ops",
    ),
    Panel(
        "Failures by code",
        "Jobs ended failed per second, by error code: decode codes are the station's images, "
        "inference_error and internal_error ours, worker_lost a worker that died.",
        [
            Query(
                f'sum by (code) (rate(eldefect_worker_jobs_total{{outcome="failed"}}[{RATE}]))',
                "{{code}}",
            )
        ],
        unit="ops",
    ),
    Panel(
        "Queue depth",
        "Jobs queued and running now, read from the database (eldefect_queue_jobs).",
        [Query("sum by (queue, status) (eldefect_queue_jobs)", "{{queue}} {{status}}")],
    ),
    Panel(
        "Oldest queued job",
        "Age of the oldest job still queued; 0 when the queue is empty.",
        [Query("max by (queue) (eldefect_queue_oldest_job_age_seconds)", "{{queue}}")],
        unit="s",
    ),
    Panel(
        "Queue wait percentiles",
        "Time from a job's creation to its claim by a worker (eldefect_worker_queue_wait_seconds).",
        _quantiles("eldefect_worker_queue_wait_seconds"),
        unit="s",
    ),
    Panel(
        "Inference time percentiles",
        "One forward pass over a batch (eldefect_worker_inference_duration_seconds).",
        _quantiles("eldefect_worker_inference_duration_seconds"),
        unit="s",
    ),
    Panel(
        "Batch size",
        "Jobs per batch: the mean, and the 95th percentile (eldefect_worker_batch_size).",
        [
            Query(
                f"sum(rate(eldefect_worker_batch_size_sum[{RATE}]))"
                f" / sum(rate(eldefect_worker_batch_size_count[{RATE}]))",
                "mean",
            ),
            Query(
                "histogram_quantile(0.95, sum by (le) "
                f"(rate(eldefect_worker_batch_size_bucket[{RATE}])))",
                "p95",
            ),
        ],
    ),
    Panel(
        "Decode time percentiles",
        "Decoding one image and computing its input statistics "
        "(eldefect_worker_decode_duration_seconds).",
        _quantiles("eldefect_worker_decode_duration_seconds"),
        unit="s",
    ),
    Panel(
        "Workers up",
        "Worker processes Prometheus scrapes successfully.",
        [Query('sum(up{job="eldefect-worker"})', "workers")],
        kind="stat",
        width=8,
        height=4,
    ),
    Panel(
        "Since the last sweep",
        "Time since the sweep last ran (task_runs, through the exporter).",
        [
            Query(
                'time() - max(eldefect_task_last_run_timestamp_seconds{task="sweep"})',
                "sweep",
            )
        ],
        unit="s",
        kind="stat",
        width=8,
        height=4,
    ),
    Panel(
        "Database readable",
        "1 when the exporter could read the database at its last scrape.",
        [Query("min(eldefect_exporter_database_up)", "database")],
        kind="stat",
        width=8,
        height=4,
    ),
    Panel(
        "Gateway request rate by route",
        "HTTP requests answered per second, by route template (eldefect_gateway_requests_total).",
        [Query(f"sum by (route) (rate(eldefect_gateway_requests_total[{RATE}]))", "{{route}}")],
        unit="reqps",
    ),
    Panel(
        "Gateway error responses by status",
        "4xx and 5xx answers per second, by status code.",
        [
            Query(
                "sum by (status) (rate(eldefect_gateway_requests_total"
                f'{{status=~"4..|5.."}}[{RATE}]))',
                "{{status}}",
            )
        ],
        unit="reqps",
    ),
    Panel(
        "Gateway latency p95 by route",
        "95th percentile time to answer (eldefect_gateway_request_duration_seconds). "
        "GET /v1/jobs/{job_id} includes ?wait long-polls, so it is shown apart.",
        [
            Query(
                "histogram_quantile(0.95, sum by (le, route) "
                "(rate(eldefect_gateway_request_duration_seconds_bucket"
                f'{{route!="/v1/jobs/{{job_id}}"}}[{RATE}])))',
                "{{route}}",
            ),
            Query(
                "histogram_quantile(0.95, sum by (le) "
                "(rate(eldefect_gateway_request_duration_seconds_bucket"
                f'{{route="/v1/jobs/{{job_id}}"}}[{RATE}])))',
                "GET /v1/jobs/{job_id} (incl. wait)",
            ),
        ],
        unit="s",
    ),
    Panel(
        "Jobs accepted by endpoint",
        "Jobs created per second (an idempotent replay does not count), by endpoint.",
        [
            Query(
                f"sum by (endpoint) (rate(eldefect_gateway_jobs_accepted_total[{RATE}]))",
                "{{endpoint}}",
            )
        ],
        unit="ops",
    ),
    Panel(
        "Uploads refused by reason",
        "Files refused before a job was made, per second, by reason code.",
        [
            Query(
                f"sum by (reason) (rate(eldefect_gateway_jobs_refused_total[{RATE}]))",
                "{{reason}}",
            )
        ],
        unit="ops",
    ),
    Panel(
        "Enqueue failures",
        "Jobs stored but not sent to the broker, per second; the sweep re-sends them.",
        [
            Query(
                f"sum(rate(eldefect_gateway_enqueue_failures_total[{RATE}]))",
                "enqueue failures",
            )
        ],
        unit="ops",
    ),
]

MODEL = [
    Panel(
        "Version in service per worker",
        "The registered model name and version each worker serves (eldefect_worker_model_info).",
        [
            Query(
                "max by (instance, name, version) (eldefect_worker_model_info)",
                "{{instance}}: {{name}} v{{version}}",
            )
        ],
    ),
    Panel(
        "Workers per version",
        "How many workers serve each version: two versions at once during a roll-out only.",
        [Query("count by (version) (eldefect_worker_model_info)", "v{{version}}")],
    ),
    Panel(
        "Model loads and load failures",
        "Versions loaded (the first and every swap after a promotion) and loads that failed.",
        [
            Query(
                f"sum by (instance) (increase(eldefect_worker_model_loads_total[{RATE}]))",
                "loads {{instance}}",
            ),
            Query(
                f"sum by (instance) (increase(eldefect_worker_model_load_failures_total[{RATE}]))",
                "failures {{instance}}",
            ),
        ],
    ),
    Panel(
        "Model in service",
        "1 when an inference worker has a model in service, 0 while it waits for one.",
        [
            Query(
                'min by (instance) (eldefect_worker_model_loaded{job="eldefect-worker"})',
                "{{instance}}",
            )
        ],
    ),
    Panel(
        "Predicted positive rate per class",
        "Share of scored images predicted positive for each class over 15 minutes: what the "
        "prediction-drift check compares with the reference rate.",
        [
            Query(
                "sum by (label) (rate(eldefect_worker_predictions_positive_total[15m]))"
                " / ignoring (label) group_left sum(rate(eldefect_worker_predictions_total[15m]))",
                "{{label}}",
            )
        ],
        unit="percentunit",
    ),
    Panel(
        "Images scored per second",
        "Images the model scored whose result was stored (eldefect_worker_predictions_total).",
        [Query(f"sum(rate(eldefect_worker_predictions_total[{RATE}]))", "images")],
        unit="ops",
    ),
]

DRIFT = [
    Panel(
        "Verdict",
        "The latest report's verdict over time: 1 for ok, drift or insufficient_data.",
        [Query("max by (verdict) (eldefect_drift_verdict)", "{{verdict}}")],
    ),
    Panel(
        "Window size",
        "Jobs in the latest report's window (n); below the minimum the verdict is "
        "insufficient_data.",
        [Query("max(eldefect_drift_window_jobs)", "n")],
        kind="stat",
        width=6,
        height=4,
    ),
    Panel(
        "Since the last report",
        "Time since the latest drift report.",
        [Query("time() - max(eldefect_drift_last_report_timestamp_seconds)", "age")],
        unit="s",
        kind="stat",
        width=6,
        height=4,
    ),
    Panel(
        "Feature z",
        "z of each input statistic's window mean against the reference profile; the dashed "
        "lines are ±drift_z_threshold.",
        [
            Query('max by (name) (eldefect_drift_z{kind="feature"})', "{{name}}"),
            *_threshold_lines("eldefect_drift_z_threshold", "feature"),
        ],
    ),
    Panel(
        "Feature effect size (d)",
        "Cohen's d of each input statistic; the dashed lines are ±drift_effect_threshold. "
        "A feature drifts when both its |z| and its |d| cross their lines.",
        [
            Query('max by (name) (eldefect_drift_effect{kind="feature"})', "{{name}}"),
            *_threshold_lines("eldefect_drift_effect_threshold", "feature"),
        ],
    ),
    Panel(
        "Class z",
        "z of each class's predicted positive rate against the reference rate; the dashed "
        "lines are ±drift_rate_z_threshold.",
        [
            Query('max by (name) (eldefect_drift_z{kind="class"})', "{{name}}"),
            *_threshold_lines("eldefect_drift_z_threshold", "class"),
        ],
    ),
    Panel(
        "Class effect size (h)",
        "Cohen's h of each class's predicted positive rate against the reference rate; the "
        "dashed lines are ±drift_rate_effect_threshold.",
        [
            Query('max by (name) (eldefect_drift_effect{kind="class"})', "{{name}}"),
            *_threshold_lines("eldefect_drift_effect_threshold", "class"),
        ],
    ),
    Panel(
        "Drifted features and classes",
        "1 for each feature or class that drifted in the latest report.",
        [Query("max by (kind, name) (eldefect_drift_drifted)", "{{kind}} {{name}}")],
    ),
    Panel(
        "Feature means: window and reference",
        "Each input statistic's mean over the window, beside its reference mean.",
        [
            Query('max by (name) (eldefect_drift_window_value{kind="feature"})', "{{name}}"),
            Query(
                'max by (name) (eldefect_drift_reference_value{kind="feature"})',
                "{{name}} reference",
            ),
        ],
    ),
    Panel(
        "Class positive rates: window and reference",
        "Each class's predicted positive rate in the window, beside its reference rate.",
        [
            Query('max by (name) (eldefect_drift_window_value{kind="class"})', "{{name}}"),
            Query(
                'max by (name) (eldefect_drift_reference_value{kind="class"})',
                "{{name}} reference",
            ),
        ],
        unit="percentunit",
    ),
    Panel(
        "Model of the latest report",
        "The model name and version the latest drift report is about.",
        [Query("max by (name, version) (eldefect_drift_model_info)", "{{name}} v{{version}}")],
    ),
    Panel(
        "Retrain triggers by reason and outcome",
        "Retrain triggers that ended, counted since the start, by why they fired (drift, "
        "reviews, schedule, manual) and how they ended (promoted, staged, rejected, failed). "
        "A step up is a trigger that just ended; a rising `failed` line needs a look.",
        [
            Query(
                "max by (reason, outcome) (eldefect_retrain_triggers_total)",
                "{{reason}} {{outcome}}",
            )
        ],
        width=24,
    ),
]

DASHBOARDS: dict[str, tuple[str, str, str, list[Panel]]] = {
    # file name -> (uid, title, description, panels)
    "eldefect.json": (
        "eldefect-service",
        "eldefect service",
        "Throughput, latency, queue depth and wait, failures by code, batch size; the gateway.",
        SERVICE,
    ),
    "eldefect-model.json": (
        "eldefect-model",
        "eldefect model",
        "The model each worker serves, its loads, and the predicted positive rate per class.",
        MODEL,
    ),
    "eldefect-drift.json": (
        "eldefect-drift",
        "eldefect drift",
        "The latest drift reports: verdict, window size, z and effect size per feature and "
        "class against their thresholds; the retrain triggers they lead to.",
        DRIFT,
    ),
}


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    overrides = []
    if any(THRESHOLD in q.legend for q in panel.queries):
        overrides.append(
            {
                "matcher": {"id": "byRegexp", "options": f".*{THRESHOLD}"},
                "properties": [
                    {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
                    {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                ],
            }
        )
    options: dict[str, Any]
    if panel.kind == "stat":
        options = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"}
        defaults: dict[str, Any] = {"unit": panel.unit}
    else:
        options = {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max"]},
            "tooltip": {"mode": "multi"},
        }
        defaults = {"unit": panel.unit, "custom": {"fillOpacity": 10}}
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": panel.width, "h": panel.height},
        "fieldConfig": {"defaults": defaults, "overrides": overrides},
        "options": options,
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "expr": query.expr,
                "legendFormat": query.legend,
            }
            for i, query in enumerate(panel.queries)
        ],
    }


def dashboard(uid: str, title: str, description: str, panels: list[Panel]) -> dict[str, Any]:
    """A Grafana dashboard: panels laid out left to right, top to bottom, 24 units wide."""
    laid_out = []
    x = y = row_height = 0
    for panel_id, panel in enumerate(panels, start=1):
        if x + panel.width > 24:
            x, y, row_height = 0, y + row_height, 0
        laid_out.append(_panel_json(panel, panel_id, x, y))
        x += panel.width
        row_height = max(row_height, panel.height)
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["eldefect"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": []},
        "annotations": {"list": []},
        "panels": laid_out,
    }


def rendered() -> dict[str, str]:
    """File name -> the JSON text of each dashboard."""
    return {
        name: json.dumps(dashboard(*spec), indent=2) + "\n" for name, spec in DASHBOARDS.items()
    }


def main(out_dir: Path = DASHBOARD_DIR) -> None:
    for name, text in rendered().items():
        (out_dir / name).write_text(text)
        print(f"wrote {out_dir / name}", file=sys.stderr)


if __name__ == "__main__":
    main()
