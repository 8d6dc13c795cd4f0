"""Typed dependencies the routes declare: settings, a DB session, the caller and its role."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session

from db.jobs import caller_for_token, get_or_create_station
from db.models import TokenRole
from db.session import get_autocommit_sessionmaker, get_sessionmaker
from eldefect.settings import Settings
from gateway.enqueue import Enqueuer
from gateway.errors import ApiError
from gateway.tokens import TokenCache
from gateway.waiting import JobWatcher

ANONYMOUS_STATION = "anonymous"
# With auth off (a developer's machine) the caller may do everything.
OPERATOR = TokenRole.operator

_bearer = HTTPBearer(
    auto_error=False,
    description="A token from `eldefect token create --station NAME [--role operator]`.",
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


@dataclass(frozen=True)
class StationRef:
    """The calling station as routes use it: a plain value, safe to keep between requests."""

    id: str
    name: str


@dataclass(frozen=True)
class Caller:
    """Who is calling: the token's station and the token's role."""

    station: StationRef
    role: TokenRole

    @property
    def is_operator(self) -> bool:
        return self.role == TokenRole.operator

    @property
    def scope(self) -> str | None:
        """Whose jobs this caller reads: its own station's, or (operators) everyone's."""
        return None if self.is_operator else self.station.id


def _anonymous_caller(database_url: str) -> Caller:
    """Auth is off: the "anonymous" station, created when missing, with every right."""
    with get_sessionmaker(database_url)() as session:
        station = get_or_create_station(session=session, name=ANONYMOUS_STATION)
        return Caller(StationRef(station.id, station.name), OPERATOR)


def _lookup_caller(database_url: str, token: str) -> Caller | None:
    """The token's caller from the database (one read: an autocommit session)."""
    with get_autocommit_sessionmaker(database_url)() as session:
        found = caller_for_token(session=session, token=token)
        if found is None:
            return None
        station, role = found
        return Caller(StationRef(station.id, station.name), role)


def get_token_cache(request: Request) -> TokenCache[Caller]:
    cache: TokenCache[Caller] = request.app.state.token_cache
    return cache


async def get_caller(
    settings: SettingsDep,
    cache: Annotated[TokenCache[Caller], Depends(get_token_cache)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The caller behind the bearer token ("anonymous" operator when auth is switched off).

    A token checked less than `gateway_token_cache_s` ago is taken from the cache without a
    query (gateway/tokens.py: a revocation reaches this process within that time)."""
    if not settings.auth_enabled:
        return await run_in_threadpool(_anonymous_caller, settings.database_url)
    if credentials is None or not credentials.credentials:
        raise _unauthorized(
            "missing bearer token: send 'Authorization: Bearer <station token>'",
            "invalid_request",
        )
    token = credentials.credentials
    caller = cache.get(token)
    if caller is None:
        # Its own short session: a long-poll must not hold a pooled connection while it waits.
        caller = await run_in_threadpool(_lookup_caller, settings.database_url, token)
        if caller is None:
            raise _unauthorized(
                "the bearer token is not valid (unknown or revoked)", "invalid_token"
            )
        cache.put(token, caller)
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]


def get_current_station(caller: CallerDep) -> StationRef:
    """The station the bearer token belongs to (or "anonymous" when auth is switched off)."""
    return caller.station


def require_operator(caller: CallerDep) -> Caller:
    """Operator endpoints: a station token is known but not allowed (403, not 401)."""
    if not caller.is_operator:
        raise ApiError(
            403,
            "forbidden",
            "this endpoint needs an operator token (`eldefect token create --station NAME "
            "--role operator`); station tokens submit and read their own jobs only",
        )
    return caller


CurrentStation = Annotated[StationRef, Depends(get_current_station)]
OperatorDep = Annotated[Caller, Depends(require_operator)]


BodyT = TypeVar("BodyT", bound=BaseModel)


def operator_json(model: type[BodyT]) -> Callable[..., Awaitable[BodyT]]:
    """A dependency: the request's JSON body as `model`, read once the caller is an operator.

    FastAPI parses a body parameter before any dependency runs, so with one a malformed body
    would answer 422 to a caller whose token deserves a 401 or 403, and anyone could make the
    gateway parse a megabyte of JSON. The route documents the body with `json_body(model)`.
    """

    async def read(request: Request, _caller: OperatorDep) -> BodyT:
        raw = await request.body()
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            raise RequestValidationError(
                [{**e, "loc": ("body", *e["loc"])} for e in errors]
            ) from None

    return read


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
