"""HTTP endpoints for Prometheus in the processes that are not the gateway.

- `eldefect beat` serves the database exporter (monitoring/collector.py) on `exporter_port`:
  its own registry, holding only the database collector, so the beat process's imports (the
  worker metric definitions among them) never show up as a fake worker.
- `eldefect worker` serves its process's default registry (monitoring/metrics.py) on
  `worker_metrics_port`: a port per worker process.

Both bind `metrics_host` and answer GET /metrics in a daemon thread beside the process's work.
"""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

from eldefect.settings import Settings
from monitoring import metrics as _worker_metrics  # noqa: F401  (defines them in REGISTRY)
from monitoring.collector import DatabaseCollector
from monitoring.retrain_metrics import RetrainTriggerCollector


class MetricsPortError(RuntimeError):
    """The metrics port could not be bound (taken by another process, or not allowed)."""


def exporter_registry(settings: Settings) -> CollectorRegistry:
    """A registry that reads the database on every scrape, and nothing else."""
    registry = CollectorRegistry()
    registry.register(DatabaseCollector(settings))
    registry.register(RetrainTriggerCollector(settings.database_url))
    return registry


def _serve(host: str, port: int, registry: CollectorRegistry, what: str) -> WSGIServer:
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise MetricsPortError(
            f"cannot serve {what} metrics on {host}:{port} ({exc.strerror or exc}); "
            f"every process needs a port of its own"
        ) from None
    return server


def serve_exporter(settings: Settings, port: int) -> WSGIServer:
    """Start the database exporter on `port` (0 picks a free one: server.server_port)."""
    return _serve(settings.metrics_host, port, exporter_registry(settings), "exporter")


def serve_worker_metrics(settings: Settings, port: int) -> WSGIServer:
    """Start this worker process's /metrics on `port`."""
    return _serve(settings.metrics_host, port, REGISTRY, "worker")
