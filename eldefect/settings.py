"""The one settings object, read from the environment (and a `.env` file).

Names follow CONTRACT.md. Every process (CLI, gateway, worker, beat) builds it once through
`get_settings()`; tests that change the environment call `get_settings.cache_clear()`.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# MLflow otherwise phones home on every run; set before mlflow is ever imported.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

EMBEDDED_BROKER_URL = "filesystem://"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ELDEFECT_", env_file=".env", extra="ignore", protected_namespaces=()
    )

    var_dir: Path = Field(Path("var"), description="Folder for embedded databases and files.")
    database_url: str = "sqlite:///var/eldefect.db"
    broker_url: str = Field(
        EMBEDDED_BROKER_URL,
        description="Celery broker; the default is kombu's filesystem transport under var/.",
    )
    broker_poll_interval_s: float = Field(
        0.02, gt=0, description="Polling interval of the embedded transport (its latency)."
    )
    mlflow_tracking_uri: str = Field(
        "sqlite:///var/mlflow.db",
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "ELDEFECT_MLFLOW_TRACKING_URI"),
    )
    mlflow_experiment: str = "eldefect"
    model_name: str = "el_defect_classifier"
    model_alias: str = "production"

    # Upload limits (gateway) and decode limit (everywhere an image is opened).
    max_upload_bytes: int = Field(20 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(40_000_000, gt=0)
    max_batch_files: int = Field(64, ge=1, description="Files one POST /v1/batches may carry.")

    # Serving.
    auth_enabled: bool = True
    batch_size: int = Field(16, ge=1)
    batch_wait_ms: int = Field(50, ge=0)
    inference_backend: Literal["auto", "onnx", "torch"] = "auto"
    inference_device: Literal["cpu", "cuda"] = Field(
        "cpu", description="Where a worker runs the model; `eldefect worker --device` sets it."
    )
    model_check_interval_s: float = Field(10.0, gt=0)
    requeue_after_s: float = Field(60.0, gt=0, description="Sweep re-enqueues older queued jobs.")
    running_timeout_s: float = Field(300.0, gt=0, description="Sweep fails/requeues stuck jobs.")
    max_attempts: int = Field(
        3, ge=1, description="Claims of one job before the sweep fails it as worker_lost."
    )
    sweep_interval_s: float = Field(5.0, gt=0, description="How often beat runs the sweep.")
    inference_queue: str = Field(
        "inference.cpu", description="Queue the gateway and the sweep send inference tasks to."
    )

    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8000
    gateway_wait_poll_s: float = Field(
        0.1, gt=0, description="How often the gateway's one poller checks jobs held by ?wait."
    )
    gateway_migrate: bool | None = Field(
        None,
        description="`eldefect gateway` applies migrations at start; default: only on SQLite.",
    )
    readyz_timeout_s: float = Field(5.0, gt=0, description="Time each /readyz check may take.")

    # Prometheus endpoints of the processes that are not the gateway (docs/observability.md).
    metrics_host: str = Field(
        "127.0.0.1", description="Interface the worker's and the exporter's metrics bind."
    )
    worker_metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port `eldefect worker` serves /metrics on; 0 = none (one port per worker).",
    )
    exporter_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port `eldefect beat` serves the database exporter on; 0 = none.",
    )
    log_level: str = "INFO"

    @property
    def uses_embedded_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")

    def ensure_var_dir(self) -> Path:
        self.var_dir.mkdir(parents=True, exist_ok=True)
        return self.var_dir


@lru_cache
def get_settings() -> Settings:
    return Settings()
