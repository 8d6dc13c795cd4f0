"""Drift checks over served jobs, stored as reports: the plain functions beat and the CLI call.

One check: find the production model version and its card (registry metadata only, no
weights), select a window of that version's latest results with their input statistics,
measure drift against the card's reference profile (monitoring.drift), store a DriftReport
with one DriftMeasure per feature and class, and mark the `drift` task run.

Only results of the production version enter a window, so a promotion starts a new one: the
new version has no results yet, and its first reports say `insufficient_data` until it has
served `drift_min_n` images.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from db.lifecycle import as_utc
from db.models import DriftMeasure, DriftReport, DriftVerdict, InputStats, Result, utcnow
from db.session import session_scope
from db.task_runs import record_task_run
from eldefect.card import ModelCard
from eldefect.settings import Settings
from eldefect.stats import FEATURES
from monitoring.drift import Kind, Measure, Thresholds, Verdict, measure_drift

log = logging.getLogger(__name__)

TASK_NAME = "drift"  # its row in task_runs
NO_PREDICTION_PROFILE = (
    "the model card's reference profile has no predicted_positive_rates (the model was "
    "registered before prediction drift existed): prediction drift skipped, input drift only"
)
NOTHING_MEASURED = (
    "nothing could be measured: no input statistic is both in the reference profile and in "
    "every result, and there are no predicted positive rates to compare with; no verdict "
    "without a measure"
)


@dataclass(frozen=True)
class ProductionModel:
    """The version drift is measured for, with its card (the reference profile)."""

    name: str
    version: str
    card: ModelCard


def production_model(settings: Settings) -> ProductionModel | None:
    """The model under the serving alias and its card, read from registry metadata.

    No weights and no torch: only the MLmodel file's card. None when no version is under the
    alias yet.
    """
    from eldefect.registry import load_card, model_uri, resolve_alias  # MLflow is slow to import

    name, uri = settings.model_name, settings.mlflow_tracking_uri
    version = resolve_alias(name, settings.model_alias, uri)
    if version is None:
        return None
    return ProductionModel(name, version, load_card(model_uri(name, version), uri))


def thresholds_from(settings: Settings) -> Thresholds:
    return Thresholds(
        min_n=settings.drift_min_n,
        z=settings.drift_z_threshold,
        effect=settings.drift_effect_threshold,
        rate_z=settings.drift_rate_z_threshold,
        rate_effect=settings.drift_rate_effect_threshold,
    )


@dataclass(frozen=True)
class Window:
    """The results one check looks at: statistics (n, F) in FEATURES order, defects per row."""

    features: np.ndarray
    defects: list[list[str]]
    start: datetime | None
    end: datetime | None

    @property
    def n(self) -> int:
        return len(self.defects)


def select_window(
    *,
    session: Session,
    model_name: str,
    model_version: str,
    size: int,
    mode: str,
    max_age_s: float,
    now: datetime,
) -> Window:
    """The window of `model_version`'s results with input statistics (see the settings).

    `latest`: the newest `size` results. `tumbling`: the oldest `size` results after the end
    of the previous conclusive (not insufficient_data) window of this version, so every result
    lands in one window; results stored in the same batch (one timestamp) are kept together,
    so a window may exceed `size` by less than a batch rather than split one.
    """
    columns = [Result.created_at, Result.defects, *(getattr(InputStats, f) for f in FEATURES)]
    query = (
        select(*columns)
        .join(InputStats, InputStats.job_id == Result.job_id)
        .where(
            Result.model_name == model_name,
            Result.model_version == model_version,
            Result.created_at >= now - timedelta(seconds=max_age_s),
        )
    )
    if mode == "latest":
        query = query.order_by(Result.created_at.desc(), Result.job_id.desc()).limit(size)
    elif mode == "tumbling":
        previous_end = session.scalar(
            select(func.max(DriftReport.window_end)).where(
                DriftReport.model_name == model_name,
                DriftReport.model_version == model_version,
                DriftReport.verdict != DriftVerdict.insufficient_data,
            )
        )
        if previous_end is not None:
            query = query.where(Result.created_at > previous_end)
        last = session.scalars(
            query.with_only_columns(Result.created_at)
            .order_by(Result.created_at, Result.job_id)
            .offset(size - 1)
            .limit(1)
        ).first()
        if last is not None:  # a full window: up to the size-th result and its batch mates
            query = query.where(Result.created_at <= last)
    else:
        raise ValueError(f"unknown drift window mode {mode!r}; use 'latest' or 'tumbling'")
    rows = session.execute(query).all()
    if not rows:
        return Window(np.zeros((0, len(FEATURES))), [], None, None)
    stamps = [as_utc(row[0]) for row in rows]
    return Window(
        features=np.array([row[2:] for row in rows], dtype=np.float64),  # (n, F)
        defects=[list(row[1]) for row in rows],
        start=min(stamps),
        end=max(stamps),
    )


@dataclass(frozen=True)
class ReportView:
    """A stored report with its measures, as the CLI prints it and the HTTP API returns it."""

    id: int
    created_at: datetime
    model_name: str
    model_version: str
    window_start: datetime | None
    window_end: datetime | None
    n: int
    verdict: Verdict
    thresholds: dict[str, Any]
    notes: list[str]
    measures: list[Measure]

    @classmethod
    def of(cls, row: DriftReport) -> ReportView:
        return cls(
            id=row.id,
            created_at=as_utc(row.created_at),
            model_name=row.model_name,
            model_version=row.model_version,
            window_start=as_utc(row.window_start) if row.window_start else None,
            window_end=as_utc(row.window_end) if row.window_end else None,
            n=row.n,
            verdict=Verdict(row.verdict.value),
            thresholds=dict(row.thresholds),
            notes=list(row.notes),
            measures=[
                Measure(
                    Kind(m.kind),
                    m.name,
                    m.window_value,
                    m.reference_value,
                    m.z,
                    m.effect,
                    m.drifted,
                )
                for m in row.measures
            ],
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (ISO 8601 times)."""

        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        return {
            "id": self.id,
            "created_at": iso(self.created_at),
            "model": {"name": self.model_name, "version": self.model_version},
            "window": {"start": iso(self.window_start), "end": iso(self.window_end), "n": self.n},
            "verdict": self.verdict.value,
            "thresholds": self.thresholds,
            "notes": self.notes,
            "measures": [
                {
                    "kind": m.kind.value,
                    "name": m.name,
                    "window_value": m.window_value,
                    "reference_value": m.reference_value,
                    "z": m.z,
                    "effect": m.effect,
                    "drifted": m.drifted,
                }
                for m in self.measures
            ],
        }


def _positives(defects: Sequence[Sequence[str]], classes: Sequence[str]) -> np.ndarray:
    """(n, C) booleans: which classes serving reported as defects for each image."""
    return np.array([[c in row for c in classes] for row in defects], dtype=bool).reshape(
        len(defects), len(classes)
    )


def _measurable(
    window: Window, reference: Mapping[str, object], notes: list[str]
) -> tuple[np.ndarray, list[str]]:
    """The window's columns drift can compare: statistics the reference profile has (older
    models lack newer ones) and every result in the window has (rows stored before a statistic
    existed hold NULL). What is left out is said in `notes`."""
    keep: list[int] = []
    for i, name in enumerate(FEATURES):
        missing = int(np.isnan(window.features[:, i]).sum())
        if name not in reference:
            notes.append(
                f"the reference profile has no {name!r} (the model was registered before that "
                "statistic existed): not measured"
            )
        elif missing:
            notes.append(
                f"{name!r} is missing for {missing} of {window.n} results (served before that "
                "statistic existed): not measured"
            )
        else:
            keep.append(i)
    return window.features[:, keep], [FEATURES[i] for i in keep]


def check_drift(
    *, session: Session, settings: Settings, model: ProductionModel, now: datetime | None = None
) -> ReportView:
    """Measure `model`'s current window and store the report (the caller commits)."""
    now = now or utcnow()
    thresholds = thresholds_from(settings)
    window = select_window(
        session=session,
        model_name=model.name,
        model_version=model.version,
        size=settings.drift_window_size,
        mode=settings.drift_window_mode,
        max_age_s=settings.drift_max_age_s,
        now=now,
    )
    profile = model.card.profile
    notes: list[str] = []
    features, names = _measurable(window, profile.get("features", {}), notes)
    reference_rates = profile.get("predicted_positive_rates")
    if reference_rates is None:
        notes.append(NO_PREDICTION_PROFILE)
    if window.n < thresholds.min_n:
        notes.append(
            f"{window.n} results of version {model.version} in the window; "
            f"{thresholds.min_n} needed for a verdict"
        )
    classes = list(model.card.labels)
    result = measure_drift(
        features=features,
        feature_names=names,
        feature_reference=profile.get("features", {}),
        positives=_positives(window.defects, classes) if reference_rates is not None else None,
        classes=classes,
        reference_rates=reference_rates,
        thresholds=thresholds,
    )
    if window.n and not result.measures:
        notes.append(NOTHING_MEASURED)
    row = DriftReport(
        created_at=now,
        model_name=model.name,
        model_version=model.version,
        window_start=window.start,
        window_end=window.end,
        n=result.n,
        verdict=DriftVerdict(result.verdict.value),
        thresholds={
            "z": thresholds.z,
            "effect": thresholds.effect,
            "rate_z": thresholds.rate_z,
            "rate_effect": thresholds.rate_effect,
            "min_n": thresholds.min_n,
            "window_size": settings.drift_window_size,
            "window_mode": settings.drift_window_mode,
            "max_age_s": settings.drift_max_age_s,
        },
        notes=notes,
        measures=[
            DriftMeasure(
                kind=m.kind.value,
                name=m.name,
                window_value=m.window_value,
                reference_value=m.reference_value,
                z=m.z,
                effect=m.effect,
                drifted=m.drifted,
            )
            for m in result.measures
        ],
    )
    session.add(row)
    session.flush()
    return ReportView.of(row)


def run_drift_check(
    *,
    settings: Settings,
    model_source: Callable[[Settings], ProductionModel | None] = production_model,
    now: datetime | None = None,
) -> ReportView | None:
    """One scheduled check: a report for the production model (None when there is none yet,
    so nothing to measure against), and the task run marked either way."""
    now = now or utcnow()
    model = model_source(settings)
    with session_scope(settings.database_url) as session:
        report = None
        if model is None:
            log.info("drift: no model under %s@%s yet", settings.model_name, settings.model_alias)
        else:
            report = check_drift(session=session, settings=settings, model=model, now=now)
        record_task_run(session=session, name=TASK_NAME, now=now)
    if report is not None:
        log.log(
            logging.WARNING if report.verdict == Verdict.drift else logging.INFO,
            "drift: %s v%s, %d results: %s%s",
            report.model_name,
            report.model_version,
            report.n,
            report.verdict.value,
            "".join(f" [{m.kind.value} {m.name}]" for m in report.measures if m.drifted),
        )
    return report


def latest_reports(
    *, session: Session, limit: int, model_name: str | None = None
) -> list[ReportView]:
    """The newest `limit` reports (of `model_name`, else of any model), newest first, each
    with its measures."""
    query = (
        select(DriftReport)
        .options(selectinload(DriftReport.measures))
        .order_by(DriftReport.created_at.desc(), DriftReport.id.desc())
        .limit(limit)
    )
    if model_name is not None:
        query = query.where(DriftReport.model_name == model_name)
    return [ReportView.of(row) for row in session.scalars(query)]
