"""Metrics read from the database at scrape time: queue depth, drift, periodic tasks.

The database is the truth about jobs and drift reports, so these numbers are read from it on
every scrape rather than kept in some process's memory: they are right whichever process
restarted, and two exporters agree. `read_state` is the query (tests call it), `families`
turns its answer into metric families, `DatabaseCollector` joins the two for a registry.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.lifecycle import as_utc
from db.models import DriftVerdict, Job, JobStatus, TaskRun
from db.session import session_scope
from eldefect.settings import Settings
from monitoring.reports import ReportView, latest_reports

log = logging.getLogger(__name__)

OPEN_STATUSES = (JobStatus.queued, JobStatus.running)
# Periodic tasks whose last run is always exported (0 until the first run), so an alert on
# "not run lately" also fires when it never ran. Other rows of task_runs are exported as found.
KNOWN_TASKS = ("sweep", "drift")

# name -> (help, label names): every family this collector can export.
FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "eldefect_exporter_database_up": (
        "1 when the last scrape could read the database, else 0 (and nothing else is exported).",
        (),
    ),
    "eldefect_queue_jobs": (
        "Jobs waiting (queued) or being worked on (running), by queue and status.",
        ("queue", "status"),
    ),
    "eldefect_queue_oldest_job_age_seconds": (
        "Age of the oldest queued job since it was created, 0 when none is queued.",
        ("queue",),
    ),
    "eldefect_task_last_run_timestamp_seconds": (
        "Unix time a periodic task last ran (task_runs), 0 if it never ran.",
        ("task",),
    ),
    "eldefect_drift_last_report_timestamp_seconds": (
        "Unix time of the latest drift report of the served model name.",
        (),
    ),
    "eldefect_drift_model_info": (
        "1 for the model name and version the latest drift report is about.",
        ("name", "version"),
    ),
    "eldefect_drift_verdict": (
        "1 for the verdict of the latest drift report (ok, drift, insufficient_data), else 0.",
        ("verdict",),
    ),
    "eldefect_drift_window_jobs": (
        "Jobs in the window of the latest drift report (n).",
        (),
    ),
    "eldefect_drift_z": (
        "z score of a feature (input statistic) or class (positive rate) in the latest report.",
        ("kind", "name"),
    ),
    "eldefect_drift_effect": (
        "Effect size (Cohen's d for a feature, h for a class) in the latest report.",
        ("kind", "name"),
    ),
    "eldefect_drift_drifted": (
        "1 when the feature or class drifted (both |z| and |effect| past their thresholds).",
        ("kind", "name"),
    ),
    "eldefect_drift_window_value": (
        "The window's value: a feature's mean, or a class's predicted positive rate.",
        ("kind", "name"),
    ),
    "eldefect_drift_reference_value": (
        "The reference profile's value for the same feature or class.",
        ("kind", "name"),
    ),
    # kind="feature" (input statistics) or "class" (predicted positive rates): each has its own.
    "eldefect_drift_z_threshold": ("|z| past which a feature or class may drift.", ("kind",)),
    "eldefect_drift_effect_threshold": (
        "|effect size| past which a feature or class may drift.",
        ("kind",),
    ),
}


@dataclass(frozen=True)
class DatabaseState:
    """What the database says now; `families` exports it."""

    now: datetime
    jobs: dict[str, int]  # open status -> count
    oldest_queued: datetime | None
    task_runs: dict[str, datetime] = field(default_factory=dict)
    report: ReportView | None = None  # the latest drift report of the served model


def read_state(*, session: Session, model_name: str, now: datetime | None = None) -> DatabaseState:
    """A handful of small queries (indexed), run on every scrape."""
    counts = session.execute(
        select(Job.status, func.count()).where(Job.status.in_(OPEN_STATUSES)).group_by(Job.status)
    )
    jobs = {str(status.value): 0 for status in OPEN_STATUSES}
    for status, count in counts:
        jobs[str(JobStatus(status).value)] = int(count)
    oldest = session.scalar(select(func.min(Job.created_at)).where(Job.status == JobStatus.queued))
    task_runs = {
        row.name: as_utc(row.last_run_at) for row in session.scalars(select(TaskRun)).all()
    }
    latest = latest_reports(session=session, limit=1, model_name=model_name)
    return DatabaseState(
        now=now or datetime.now(UTC),
        jobs=jobs,
        oldest_queued=as_utc(oldest) if oldest is not None else None,
        task_runs=task_runs,
        report=latest[0] if latest else None,
    )


def _family(name: str) -> GaugeMetricFamily:
    help_text, labels = FAMILIES[name]
    return GaugeMetricFamily(name, help_text, labels=list(labels) if labels else None)


def families(state: DatabaseState, settings: Settings) -> list[Metric]:
    """The metric families of one database state."""
    out: dict[str, GaugeMetricFamily] = {}

    def add(name: str, value: float, *labels: str) -> None:
        family = out.setdefault(name, _family(name))
        family.add_metric(list(labels), value)

    add("eldefect_exporter_database_up", 1)
    # Jobs carry no queue: every inference job is sent to inference_queue (settings).
    queue = settings.inference_queue
    for status, count in state.jobs.items():
        add("eldefect_queue_jobs", count, queue, status)
    age = (state.now - state.oldest_queued).total_seconds() if state.oldest_queued else 0.0
    add("eldefect_queue_oldest_job_age_seconds", max(0.0, age), queue)
    runs = {task: 0.0 for task in KNOWN_TASKS}
    runs.update({task: at.timestamp() for task, at in state.task_runs.items()})
    for task, timestamp in sorted(runs.items()):
        add("eldefect_task_last_run_timestamp_seconds", timestamp, task)

    for kind, z, effect in (
        ("feature", settings.drift_z_threshold, settings.drift_effect_threshold),
        ("class", settings.drift_rate_z_threshold, settings.drift_rate_effect_threshold),
    ):
        add("eldefect_drift_z_threshold", z, kind)
        add("eldefect_drift_effect_threshold", effect, kind)
    report = state.report
    for verdict in DriftVerdict:
        latest = report is not None and report.verdict == verdict.value
        add("eldefect_drift_verdict", float(latest), verdict.value)
    if report is not None:
        add("eldefect_drift_last_report_timestamp_seconds", report.created_at.timestamp())
        add("eldefect_drift_model_info", 1, report.model_name, report.model_version)
        add("eldefect_drift_window_jobs", report.n)
        for m in report.measures:
            add("eldefect_drift_z", m.z, m.kind, m.name)
            add("eldefect_drift_effect", m.effect, m.kind, m.name)
            add("eldefect_drift_drifted", float(m.drifted), m.kind, m.name)
            add("eldefect_drift_window_value", m.window_value, m.kind, m.name)
            add("eldefect_drift_reference_value", m.reference_value, m.kind, m.name)
    return list(out.values())


class DatabaseCollector(Collector):
    """Reads the database on every scrape; a failed read exports database_up 0, not an error."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def describe(self) -> Iterator[Metric]:
        for name in FAMILIES:
            yield _family(name)

    def collect(self) -> Iterator[Metric]:
        try:
            with session_scope(self._settings.database_url) as session:
                state = read_state(session=session, model_name=self._settings.model_name)
        except Exception:  # the database down must show as a metric, not a failed scrape
            log.exception("cannot read the database for metrics")
            down = _family("eldefect_exporter_database_up")
            down.add_metric([], 0)
            yield down
            return
        yield from families(state, self._settings)
