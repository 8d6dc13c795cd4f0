"""Probes and metrics: /healthz (process up), /readyz (ready to serve), /metrics.

/readyz asks the database and the broker, and reads the workers table (each worker's
heartbeat, workers/housekeeping.py) for whether a live worker serves the model and which
inference queues have live workers. No MLflow here: the workers know what they serve.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import TypeVar

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text

from db.session import get_engine, session_scope
from db.workers import QueueCounts, WorkerSeen, live_workers
from eldefect.broker import INFERENCE_QUEUES, embedded_broker_folders, route_inference
from eldefect.settings import Settings, redact_secrets
from gateway.deps import EnqueuerDep, SettingsDep
from gateway.enqueue import Enqueuer
from gateway.errors import error_response
from gateway.metrics import render
from gateway.schemas import HealthPublic, ReadyPublic, error_responses

router = APIRouter(tags=["health"])
T = TypeVar("T")


# HEAD too: load balancers and uptime checks probe with it.
@router.api_route("/healthz", methods=["GET", "HEAD"], response_model=HealthPublic)
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


def read_workers(settings: Settings) -> list[WorkerSeen]:
    with session_scope(settings.database_url) as session:
        return live_workers(session=session, stale_after_s=settings.worker_stale_after_s)


def model_status(settings: Settings, workers: list[WorkerSeen]) -> tuple[bool, str]:
    """Whether a live inference worker serves the model; the reason from the workers if not."""
    inference = [w for w in workers if w.queue in INFERENCE_QUEUES]
    serving = [
        w for w in inference if w.model_name == settings.model_name and w.model_version is not None
    ]
    if serving:
        versions = ", ".join(sorted({str(w.model_version) for w in serving}))
        return True, f"{settings.model_name} version {versions} on {len(serving)} worker(s)"
    if not inference:
        return False, (
            f"no inference worker seen in the last {settings.worker_stale_after_s:g} s, "
            f"so {settings.model_name} is unavailable"
        )
    reasons = "; ".join(f"{w.name}: {w.model_error or 'still loading'}" for w in inference[:3])
    return False, f"{settings.model_name} is unavailable ({reasons})"[:500]


def queue_status(settings: Settings, workers: list[WorkerSeen]) -> tuple[bool, str, list[str]]:
    """Live workers per inference queue; failing when none has any, warnings for the others."""
    counts = QueueCounts.of(workers, settings.model_name).consumers
    summary = ", ".join(f"{q}: {counts.get(q, 0)} worker(s)" for q in INFERENCE_QUEUES)
    warnings = [
        f"{q} has no live worker; inference tasks go to "
        f"{route_inference({}, counts, settings.inference_queue.value)}"
        for q in INFERENCE_QUEUES
        if q == settings.inference_queue and not counts.get(q)
    ]
    return any(counts.get(q) for q in INFERENCE_QUEUES), summary, warnings


async def _run_check(
    check: Callable[[], T], timeout_s: float, secrets_of: list[str]
) -> tuple[bool, T | str]:
    """Run one check; a failure's reason never shows a password of `secrets_of` (URLs)."""
    try:
        return True, await asyncio.wait_for(asyncio.to_thread(check), timeout_s)
    except TimeoutError:
        return False, f"no answer within {timeout_s:g} s"
    except Exception as exc:  # a probe reports any failure as "not ready", with the reason
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return False, redact_secrets(f"{type(exc).__name__}: {reason}", secrets_of)[:300]


@router.api_route(
    "/readyz",
    methods=["GET", "HEAD"],
    response_model=ReadyPublic,
    responses=error_responses(503),
)
async def readyz(settings: SettingsDep, enqueuer: EnqueuerDep) -> ReadyPublic | JSONResponse:
    """Database and broker answer, and a live worker serves the model; 503 with the reason."""
    timeout = settings.readyz_timeout_s
    # Drivers may echo their connection string in an error: mask every configured password.
    urls = [settings.database_url, settings.broker_url]
    (db_ok, db), (broker_ok, broker), (read_ok, read) = await asyncio.gather(
        _run_check(lambda: check_database(settings), timeout, urls),
        _run_check(lambda: check_broker(settings, enqueuer), timeout, urls),
        _run_check(lambda: read_workers(settings), timeout, urls),
    )
    results: dict[str, tuple[bool, str]] = {
        "database": (db_ok, str(db)),
        "broker": (broker_ok, str(broker)),
    }
    warnings: list[str] = []
    if read_ok and isinstance(read, list):
        results["model"] = model_status(settings, read)
        queues_ok, summary, warnings = queue_status(settings, read)
        results["queues"] = (queues_ok, summary if queues_ok else f"no live worker on {summary}")
    else:
        results["model"] = results["queues"] = (False, f"cannot read the workers table: {read}")
    failed = {name: reason for name, (ok, reason) in results.items() if not ok}
    if failed:
        message = "; ".join(f"{name}: {reason}" for name, reason in failed.items())
        return error_response(503, "not_ready", message)
    return ReadyPublic(
        checks={name: reason for name, (_ok, reason) in results.items()}, warnings=warnings
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
)
def metrics() -> Response:
    """Prometheus metrics of this gateway."""
    body, content_type = render()
    return Response(content=body, media_type=content_type)
