"""One error type at the edge, and handlers that give every error the contract's shape.

`{"error": {"code": "<snake_case>", "message": "..."}}` for our own errors, FastAPI's 404, 405
and 422, the body limit's 413, a database that cannot be reached (503, one log line, no
traceback: an outage is not a bug) and unhandled exceptions (500, no stack trace).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from db.session import is_database_outage

log = logging.getLogger(__name__)

# Codes for errors raised by the framework rather than by us.
_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "file_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "service_unavailable",
}


class ApiError(Exception):
    """An error the client should see: HTTP status, stable snake_case code, message for a person."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_response(
    status_code: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status_code, headers=headers)


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status_code, exc.code, exc.message, exc.headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, f"http_{exc.status_code}")
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no such resource: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    elif exc.status_code == 413:
        limit = request.scope.get(MAX_BODY_SIZE_SCOPE_KEY)
        message = "the request body is too large" + (
            f" (the limit for this endpoint is {limit} bytes)" if limit else ""
        )
    return error_response(exc.status_code, code, message, exc.headers)


def _describe(error: Mapping[str, Any]) -> str:
    loc = [str(part) for part in error.get("loc", ())]
    if loc[:1] == ["body"] and len(loc) > 1:  # ("body", "defects") -> "defects"
        loc = loc[1:]
    where = ".".join(loc) or "request"
    return f"{where}: {error.get('msg', 'invalid')}"


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message = "; ".join(_describe(error) for error in exc.errors()) or "invalid request"
    return error_response(422, "validation_error", message)


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "the server failed to handle this request")


# nginx's "client closed request": not a server fault, so not a 5xx on the dashboards.
CLIENT_CLOSED_REQUEST = 499


async def _client_disconnected(request: Request, _exc: Exception) -> JSONResponse:
    # A station's link dropped mid-upload: nothing was accepted and nobody reads this answer.
    log.info("client disconnected during %s %s; nothing accepted", request.method, request.url.path)
    return error_response(
        CLIENT_CLOSED_REQUEST,
        "client_disconnected",
        "the client closed the connection before the request was read",
    )


# Seconds a client should wait before retrying while the database is away.
DATABASE_RETRY_AFTER_S = 2


def _first_line(exc: BaseException) -> str:
    # SQLAlchemy appends the SQL and a link on later lines; the driver's reason is the first.
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, DataError):  # a value the database cannot store (NUL in PostgreSQL text)
        message = f"a value in this request cannot be stored: {_first_line(exc)}"
        # Logged: a value our own code made unstorable would otherwise pass for the client's.
        log.warning("refused %s %s: %s", request.method, request.url.path, message)
        return error_response(422, "validation_error", message)
    if not is_database_outage(exc):
        return await _unhandled(request, exc)
    log.warning(
        "database unavailable in %s %s: %s: %s",
        request.method,
        request.url.path,
        type(exc).__name__,
        _first_line(exc),
    )
    return error_response(
        503,
        "database_unavailable",
        "the database is not reachable right now; retry shortly",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(PoolTimeoutError, _database_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ClientDisconnect, _client_disconnected)
    app.add_exception_handler(Exception, _unhandled)


class ContentLengthLimit:
    """Refuse a request whose declared Content-Length passes its path's limit, before routing.

    The upload paths have their own limits, every other path `default`. FastAPI's per-route
    body limit (set in create_app) counts streamed bytes too, but answers a too-long declared
    length in plain text; this answers it in the contract's shape, on every route.
    """

    def __init__(self, app: ASGIApp, limits: Mapping[str, int], default: int) -> None:
        self.app = app
        self.limits = dict(limits)
        self.default = default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            limit = self.limits.get(scope.get("path", "").rstrip("/"), self.default)
            declared = Headers(scope=scope).get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                response = error_response(
                    413,
                    "file_too_large",
                    f"the request body is {declared} bytes; the limit for this endpoint "
                    f"is {limit} bytes",
                    headers={"Connection": "close"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
