"""The FastAPI app: `create_app(settings)` for tests and servers; `app` for uvicorn."""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from anyio import to_thread
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from db.session import get_autocommit_sessionmaker
from eldefect.settings import Settings, get_settings, redact_url
from gateway.enqueue import Enqueuer
from gateway.errors import ContentLengthLimit, install_error_handlers
from gateway.metrics import MetricsMiddleware
from gateway.query import EmptyQueryValuesAbsent
from gateway.routes import batches, drift, health, jobs, retrains, reviews
from gateway.tokens import TokenCache
from gateway.uploads import decode_slots
from gateway.waiting import JobWatcher, listen_conninfo

log = logging.getLogger(__name__)

# Multipart framing and text fields on top of the files themselves.
FORM_OVERHEAD_BYTES = 1024 * 1024

DESCRIPTION = """Submit electroluminescence images of solar cells, get defect predictions.

Every error answers `{"error": {"code": "<snake_case>", "message": "..."}}`."""


def _warm_up() -> None:
    for module in ("celery", "eldefect.image_check"):
        importlib.import_module(module)


def log_start(settings: Settings) -> None:
    """What this gateway serves from, without secrets; a loud line when auth is off."""
    log.info(
        "gateway: database %s, broker %s, model registry %s (%s@%s), %d decode slot(s)",
        redact_url(settings.database_url),
        redact_url(settings.broker_url),
        redact_url(settings.mlflow_tracking_uri),
        settings.model_name,
        settings.model_alias,
        settings.effective_decode_slots,
    )
    if not settings.auth_enabled:
        log.warning(
            "AUTHENTICATION IS OFF (ELDEFECT_AUTH_ENABLED=false): anyone who can reach this "
            "gateway can submit and read jobs, as station 'anonymous'. For development only."
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    enqueuer = Enqueuer(settings)
    watcher = JobWatcher(
        lambda: get_autocommit_sessionmaker(settings.database_url)(),
        interval_s=settings.gateway_wait_poll_s,
        listen=listen_conninfo(settings.database_url),
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # anyio's default is 40 threads. Each busy one holds an upload's bytes and a pooled
        # connection's buffers, so the peak RSS under 64 concurrent uploads grows with the
        # thread count (docs/performance.md), while a few per core keep the CPUs busy.
        to_thread.current_default_thread_limiter().total_tokens = settings.gateway_threads
        # Import Celery in the background now, so that the first /readyz or
        # upload does not pay seconds of imports (and time out) on a busy machine.
        threading.Thread(target=_warm_up, name="eldefect-warm-up", daemon=True).start()
        log_start(settings)
        yield
        await watcher.stop()
        enqueuer.close()

    app = FastAPI(
        title="eldefect gateway",
        # /v1/jobs/ is not /v1/jobs: a 404 in the contract's shape, not a bodiless 307
        redirect_slashes=False,
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.enqueuer = enqueuer
    app.state.watcher = watcher
    app.state.token_cache = TokenCache(settings.gateway_token_cache_s)
    app.state.decode_slots = decode_slots(settings)
    limits = {
        "/v1/jobs": settings.max_upload_bytes + FORM_OVERHEAD_BYTES,
        "/v1/batches": settings.max_batch_bytes,
    }
    install_error_handlers(app)
    # Refuses a declared length over the limit before routing, so before the token is read:
    # a 413 then costs no more than a 401.
    app.add_middleware(ContentLengthLimit, limits=limits, default=FORM_OVERHEAD_BYTES)
    app.add_middleware(EmptyQueryValuesAbsent)
    app.add_middleware(MetricsMiddleware)  # outermost: counts the refusals above as well
    app.include_router(health.router)
    # Streamed bodies (no Content-Length) are cut off at the same limits while being read.
    app.include_router(jobs.router, max_body_size=limits["/v1/jobs"])
    app.include_router(batches.router, max_body_size=limits["/v1/batches"])
    for operator_routes in (reviews, drift, retrains):  # JSON bodies, small
        app.include_router(operator_routes.router, max_body_size=FORM_OVERHEAD_BYTES)
    install_openapi(app)
    return app


def install_openapi(app: FastAPI) -> None:
    """OpenAPI that tells the truth about errors.

    FastAPI documents its 422 with HTTPValidationError, but our handler answers ErrorBody;
    and every operation may answer a 500 (ErrorBody too). The routes register ErrorBody.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        error = {"$ref": "#/components/schemas/ErrorBody"}
        content = {"application/json": {"schema": error}}
        for operations in spec.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                if "422" in responses:  # FastAPI's default points at HTTPValidationError
                    responses["422"]["content"] = content
                responses.setdefault(
                    "500", {"description": "Unexpected server error.", "content": content}
                )
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


app = create_app()
