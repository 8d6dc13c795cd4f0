"""Probes and metrics: /healthz (process up), /readyz (dependencies reachable), /metrics."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text

from db.session import get_engine
from eldefect.broker import embedded_broker_folders
from eldefect.settings import Settings, redact_secrets
from gateway.deps import EnqueuerDep, SettingsDep
from gateway.enqueue import Enqueuer
from gateway.errors import error_response
from gateway.metrics import render
from gateway.schemas import HealthPublic, ReadyPublic, error_responses

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthPublic)
def healthz() -> HealthPublic:
    """The process is up (no dependency is checked)."""
    return HealthPublic()


def check_database(settings: Settings) -> str:
    with get_engine(settings.database_url).connect() as conn:
        conn.execute(text("SELECT 1"))
    return "ok"


def check_broker(settings: Settings, enqueuer: Enqueuer) -> str:
    client = enqueuer.client  # built on first use; for the embedded broker it makes the folders
    if settings.uses_embedded_broker:
        queue, _processed = embedded_broker_folders(settings)
        if not os.access(queue, os.W_OK):
            raise RuntimeError(f"embedded broker folder {queue} is missing or not writable")
        return "ok (embedded)"
    with client.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=settings.readyz_timeout_s)
    return "ok"


def check_model(settings: Settings) -> str:
    # MLflow takes about two seconds to import: only here, never at gateway import.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(settings.readyz_timeout_s)))
    from mlflow.tracking import MlflowClient

    uri = settings.mlflow_tracking_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version_by_alias(settings.model_name, settings.model_alias)
    return f"{settings.model_name} version {version.version} (@{settings.model_alias})"


async def _run_check(
    check: Callable[[], str], timeout_s: float, secrets_of: list[str]
) -> tuple[bool, str]:
    """Run one check; a failure's reason never shows a password of `secrets_of` (URLs)."""
    try:
        return True, await asyncio.wait_for(asyncio.to_thread(check), timeout_s)
    except TimeoutError:
        return False, f"no answer within {timeout_s:g} s"
    except Exception as exc:  # a probe reports any failure as "not ready", with the reason
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return False, redact_secrets(f"{type(exc).__name__}: {reason}", secrets_of)[:300]


@router.get(
    "/readyz",
    response_model=ReadyPublic,
    responses=error_responses(503),
)
async def readyz(settings: SettingsDep, enqueuer: EnqueuerDep) -> ReadyPublic | JSONResponse:
    """Database, broker and a production model are reachable; 503 with the reason otherwise."""
    checks = {
        "database": lambda: check_database(settings),
        "broker": lambda: check_broker(settings, enqueuer),
        "model": lambda: check_model(settings),
    }
    # Drivers may echo their connection string in an error: mask every configured password.
    urls = [settings.database_url, settings.broker_url, settings.mlflow_tracking_uri]
    answers = await asyncio.gather(
        *(_run_check(check, settings.readyz_timeout_s, urls) for check in checks.values())
    )
    results = dict(zip(checks, answers, strict=True))
    failed = {name: reason for name, (ok, reason) in results.items() if not ok}
    if failed:
        message = "; ".join(f"{name}: {reason}" for name, reason in failed.items())
        return error_response(503, "not_ready", message)
    return ReadyPublic(checks={name: reason for name, (_ok, reason) in results.items()})


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
)
def metrics() -> Response:
    """Prometheus metrics of this gateway."""
    body, content_type = render()
    return Response(content=body, media_type=content_type)
