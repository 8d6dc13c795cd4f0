"""Prometheus metrics of the gateway: `eldefect_gateway_<name>_<unit>`, counters end `_total`.

Labels are bounded (route templates, not raw paths; refusal codes from one list) and the
known label values are initialised up front, so every series exists from the first scrape.
With PROMETHEUS_MULTIPROC_DIR set (several server processes), /metrics builds a registry
per scrape that merges every process's files (client_python multiprocess mode).
"""

from __future__ import annotations

import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.uploads import REFUSAL_CODES

REQUESTS = Counter(
    "eldefect_gateway_requests_total",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
)
REQUEST_DURATION = Histogram(
    "eldefect_gateway_request_duration_seconds",
    "Time to answer an HTTP request (a ?wait long-poll counts its wait).",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
JOBS_ACCEPTED = Counter(
    "eldefect_gateway_jobs_accepted_total",
    "Jobs created (an idempotent replay does not count), by endpoint.",
    ["endpoint"],
)
JOBS_REFUSED = Counter(
    "eldefect_gateway_jobs_refused_total",
    "Uploaded files refused before a job was made, by reason.",
    ["reason"],
)
ENQUEUE_FAILURES = Counter(
    "eldefect_gateway_enqueue_failures_total",
    "Jobs stored but not sent to the broker (the sweep re-sends them).",
)

for _endpoint in ("jobs", "batches"):
    JOBS_ACCEPTED.labels(endpoint=_endpoint)
for _reason in REFUSAL_CODES:
    JOBS_REFUSED.labels(reason=_reason)


def render() -> tuple[bytes, str]:
    """The metrics in Prometheus text format, and its content type."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template (pure ASGI, streams intact)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope.get("method", "")
            REQUESTS.labels(method=method, route=route, status=str(status)).inc()
            REQUEST_DURATION.labels(method=method, route=route).observe(time.perf_counter() - start)
