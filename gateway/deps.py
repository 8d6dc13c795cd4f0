"""Typed dependencies the routes declare: settings, a DB session, the calling station."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from db.jobs import get_or_create_station, station_for_token
from db.models import Station
from db.session import get_sessionmaker
from eldefect.settings import Settings
from gateway.enqueue import Enqueuer
from gateway.errors import ApiError
from gateway.waiting import JobWatcher

ANONYMOUS_STATION = "anonymous"

_bearer = HTTPBearer(
    auto_error=False,
    description="A station token from `eldefect token create --station NAME`.",
)


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    with get_sessionmaker(settings.database_url)() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def _unauthorized(message: str, error: str) -> ApiError:
    challenge = f'Bearer realm="eldefect", error="{error}"'
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": challenge})


def get_current_station(
    session: SessionDep,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Station:
    """The station the bearer token belongs to (or "anonymous" when auth is switched off)."""
    if not settings.auth_enabled:
        return get_or_create_station(session=session, name=ANONYMOUS_STATION)
    if credentials is None or not credentials.credentials:
        raise _unauthorized(
            "missing bearer token: send 'Authorization: Bearer <station token>'",
            "invalid_request",
        )
    station = station_for_token(session=session, token=credentials.credentials)
    # End the read transaction: a long-poll must not hold a pooled connection while it waits.
    session.commit()
    if station is None:
        raise _unauthorized("the bearer token is not valid (unknown or revoked)", "invalid_token")
    return station


CurrentStation = Annotated[Station, Depends(get_current_station)]


def get_enqueuer(request: Request) -> Enqueuer:
    enqueuer: Enqueuer = request.app.state.enqueuer
    return enqueuer


EnqueuerDep = Annotated[Enqueuer, Depends(get_enqueuer)]


def get_watcher(request: Request) -> JobWatcher:
    watcher: JobWatcher = request.app.state.watcher
    return watcher


WatcherDep = Annotated[JobWatcher, Depends(get_watcher)]


def get_decode_slots(request: Request) -> threading.BoundedSemaphore:
    slots: threading.BoundedSemaphore = request.app.state.decode_slots
    return slots


DecodeSlotsDep = Annotated[threading.BoundedSemaphore, Depends(get_decode_slots)]


def get_idempotency_key(
    key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=200,
            description="Same key from the same station returns the first answer (200).",
        ),
    ] = None,
) -> str | None:
    """The request's Idempotency-Key; an empty (or blank) header counts as none."""
    return key if key is not None and key.strip() else None


IdempotencyKeyDep = Annotated[str | None, Depends(get_idempotency_key)]
