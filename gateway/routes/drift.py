"""The latest drift reports (operators)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from gateway.deps import OperatorDep, SessionDep
from gateway.schemas import DriftReportList, DriftReportPublic, error_responses

router = APIRouter(prefix="/v1", tags=["operators"])


@router.get("/drift", response_model=DriftReportList, responses=error_responses(401, 403, 422))
def list_drift_reports(
    _caller: OperatorDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 20,
) -> DriftReportList:
    """The latest drift reports, newest first (each names the model it judged), with their
    measures: the same query as `eldefect drift report`."""
    # Here, not at the top: monitoring.reports brings numpy (~16 MiB), which no request
    # but this one needs.
    from monitoring.reports import latest_reports

    reports = latest_reports(session=session, limit=limit)
    return DriftReportList(reports=[DriftReportPublic.from_report(r) for r in reports])
