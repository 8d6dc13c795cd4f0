"""`eldefect drift report|check` (plugged into the CLI by entry point)."""

from __future__ import annotations

from datetime import datetime

import click

from db.session import ready_database, session_scope
from eldefect.settings import get_settings
from monitoring.reports import ReportView, latest_reports, run_drift_check


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def format_report(report: ReportView) -> str:
    """A report as a few readable lines: a header, its notes, then one row per measure."""
    lines = [
        f"report {report.id}  {_when(report.created_at)}  {report.verdict.value.upper()}  "
        f"{report.model_name} v{report.model_version}  n={report.n}  "
        f"window {_when(report.window_start)} .. {_when(report.window_end)}"
    ]
    lines += [f"  note: {note}" for note in report.notes]
    if report.measures:
        lines.append(
            f"  {'kind':<8}{'name':<16}{'window':>10}{'reference':>11}{'z':>10}{'effect':>9}"
            "  drifted"
        )
    for m in report.measures:
        lines.append(
            f"  {m.kind.value:<8}{m.name:<16}{m.window_value:>10.4f}{m.reference_value:>11.4f}"
            f"{m.z:>10.2f}{m.effect:>9.3f}  {'DRIFT' if m.drifted else '-'}"
        )
    return "\n".join(lines)


@click.group()
def drift() -> None:
    """Drift of served inputs and predictions against the production model's profile."""


@drift.command("report")
@click.option("--last", "last", type=click.IntRange(min=1), default=5, show_default=True)
def report(last: int) -> None:
    """Print the latest drift reports, newest first."""
    with session_scope(ready_database(get_settings().database_url)) as session:
        reports = latest_reports(session=session, limit=last)
    if not reports:
        click.echo("no drift reports yet (beat writes one every drift_interval_s)")
        return
    click.echo("\n\n".join(format_report(r) for r in reports))


@drift.command("check")
def check() -> None:
    """Run one drift check now, store its report and print it."""
    settings = get_settings()
    ready_database(settings.database_url)
    result = run_drift_check(settings=settings)
    if result is None:
        raise click.ClickException("no production model: nothing to measure drift against")
    click.echo(format_report(result))
