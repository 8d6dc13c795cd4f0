"""`eldefect retrain status|start` and `eldefect dataset export-reviews` (entry points)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from db import retrains
from db.models import RetrainTrigger
from db.reviews import reviewed_images
from db.session import ready_database, session_scope
from eldefect.settings import get_settings


@click.group()
def retrain() -> None:
    """Retraining triggers: what fired, what was trained, what the gate decided."""


def _when(trigger: RetrainTrigger) -> str:
    return trigger.created_at.strftime("%Y-%m-%d %H:%M:%S")


def describe(trigger: RetrainTrigger) -> str:
    """One trigger with every gate number, as `retrain status` prints it."""
    head = (
        f"#{trigger.id} {trigger.reason:<8} {trigger.status.value:<9} "
        f"{trigger.decision or '-':<8} created {_when(trigger)} by {trigger.requested_by}"
    )
    lines = [head]
    if trigger.note:
        lines.append(f"  note: {trigger.note}")
    if trigger.inputs:
        lines.append(f"  inputs: {json.dumps(trigger.inputs)}")
    if trigger.model_version:
        lines.append(
            f"  challenger {trigger.model_name} v{trigger.model_version} (run {trigger.run_id}); "
            f"champion v{trigger.champion_version or '-'}"
        )
    if trigger.error:
        lines.append(f"  error: {trigger.error}")
    gate = trigger.gate or {}
    for name, numbers in gate.get("sets", {}).items():
        lines.append(f"  {name}: {'passed' if numbers['passed'] else 'not passed'}")
        for who in ("champion", "challenger"):
            scores = numbers.get(who)
            if not scores:
                continue
            recalls = ", ".join(
                f"{label} {_num(value)}" for label, value in scores["recall"].items()
            )
            lines.append(
                f"    {who:<10} n={scores['n_images']} macro AP {_num(scores['macro_ap'])} "
                f"accuracy {_num(scores['accuracy'])} recall: {recalls}"
            )
    for reason in gate.get("reasons", []):
        lines.append(f"  - {reason}")
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


@retrain.command("status")
@click.option("--last", type=click.IntRange(min=1), default=5, show_default=True)
def retrain_status(last: int) -> None:
    """The latest triggers with their gate numbers and decisions."""
    settings = get_settings()
    with session_scope(ready_database(settings.database_url)) as session:
        triggers = retrains.list_triggers(session=session, limit=last)
        text = [describe(t) for t in triggers]
    click.echo("\n".join(text) if text else "no retrain triggers yet")


@retrain.command("start")
@click.option("--reason", required=True, help="Why, for the record.")
def retrain_start(reason: str) -> None:
    """Open a manual trigger and send it to the training queue."""
    from workers.retrain_tasks import send_retrain

    settings = get_settings()
    with session_scope(ready_database(settings.database_url)) as session:
        trigger = retrains.open_trigger(
            session=session, reason="manual", requested_by="cli", note=reason
        )
        if trigger is None:
            open_one = retrains.get_open_trigger(session=session)
            which = f" (#{open_one.id}, {open_one.status.value})" if open_one else ""
            raise click.ClickException(f"a retraining is already open{which}; one at a time")
        trigger_id = trigger.id
    try:
        send_retrain(trigger_id)
    except Exception as exc:  # the broker; the trigger row is the truth and beat re-sends it
        raise click.ClickException(
            f"retrain trigger #{trigger_id} is recorded, but sending it to the broker failed "
            f"({type(exc).__name__}: {exc}); beat's retrain check re-sends queued triggers"
        ) from None
    click.echo(f"retrain trigger #{trigger_id} queued on the training queue")


@click.group()
def dataset() -> None:
    """Training data from production."""


@dataset.command("export-reviews")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder to write.",
)
@click.option(
    "--labels",
    default=None,
    help="Label set (name or YAML): only reviews made against it [default: all reviews].",
)
@click.option(
    "--holdout-out",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the held-back reviews (the production evaluation set) here.",
)
def export_reviews(out: Path, labels: str | None, holdout_out: Path | None) -> None:
    """Write reviewed jobs as a Pascal VOC folder `eldefect train --data` reads.

    The held-back share (ELDEFECT_RETRAIN_HOLDOUT_FRACTION, by job id) is never written to
    --out: it is the production evaluation set.
    """
    from eldefect.data.reviews import write_review_folders
    from eldefect.labels import load_label_set

    settings = get_settings()
    names = list(load_label_set(labels).labels) if labels else None
    with session_scope(ready_database(settings.database_url)) as session:
        report = write_review_folders(
            reviewed_images(session=session),
            train_dir=out,
            holdout_dir=holdout_out,
            holdout_fraction=settings.retrain_holdout_fraction,
            labels=names,
        )
    click.echo(f"{report.summary()}; wrote {out}" + (f" and {holdout_out}" if holdout_out else ""))
