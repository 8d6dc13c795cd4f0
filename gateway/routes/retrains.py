"""Retrain triggers (operators): list them, start one by hand."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from db import retrains
from gateway.deps import EnqueuerDep, OperatorDep, SessionDep, operator_json
from gateway.errors import ApiError
from gateway.schemas import (
    RetrainCreate,
    RetrainList,
    RetrainPublic,
    error_responses,
    json_body,
)

router = APIRouter(prefix="/v1", tags=["operators"])


@router.get("/retrains", response_model=RetrainList, responses=error_responses(401, 403, 422))
def list_retrains(
    _caller: OperatorDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> RetrainList:
    """Retrain triggers, newest first, with their gate numbers and decisions."""
    rows = retrains.list_triggers(session=session, limit=limit)
    return RetrainList(retrains=[RetrainPublic.from_trigger(t) for t in rows])


@router.post(
    "/retrains",
    status_code=201,
    response_model=RetrainPublic,
    responses=error_responses(401, 403, 409, 422),
    openapi_extra=json_body(RetrainCreate),
)
def start_retrain(
    caller: OperatorDep,
    body: Annotated[RetrainCreate, Depends(operator_json(RetrainCreate))],
    session: SessionDep,
    enqueuer: EnqueuerDep,
    response: Response,
) -> RetrainPublic:
    """Start a retraining now (reason `manual`); 409 while another one is open."""
    trigger = retrains.open_trigger(
        session=session,
        reason="manual",
        requested_by=f"api:{caller.station.name}",
        note=body.reason,
    )
    if trigger is None:
        running = retrains.get_open_trigger(session=session)
        which = f" (trigger {running.id}, {running.status.value})" if running else ""
        raise ApiError(
            409, "retrain_in_progress", f"a retraining is already open{which}; one at a time"
        )
    enqueuer.send_retrain(trigger.id)
    response.headers["Location"] = "/v1/retrains"
    return RetrainPublic.from_trigger(trigger)
