"""The one settings object, read from the environment (and a `.env` file).

Names follow CONTRACT.md. Every process (CLI, gateway, worker, beat) builds it once through
`get_settings()`; tests that change the environment call `get_settings.cache_clear()`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from eldefect.broker import INFERENCE_QUEUES, Queue

# MLflow otherwise phones home on every run; set before mlflow is ever imported.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Nor draw a progress bar into worker logs and CLI output for each model it downloads.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

EMBEDDED_BROKER_URL = "filesystem://"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ELDEFECT_", env_file=".env", extra="ignore", protected_namespaces=()
    )

    var_dir: Path = Field(
        Path("var"),
        description="Folder for embedded databases and files; the SQLite database, the "
        "MLflow store and the embedded broker live under it unless set on their own.",
    )
    database_url: str = Field(
        "sqlite:///var/eldefect.db",
        description="Job database; default: SQLite file eldefect.db under var_dir.",
    )
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
        description="MLflow tracking and registry; default: SQLite file mlflow.db under var_dir.",
    )
    mlflow_experiment: str = "eldefect"
    model_name: str = "el_defect_classifier"
    model_alias: str = "production"

    # Upload limits (gateway) and decode limit (everywhere an image is opened).
    max_upload_bytes: int = Field(20 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(40_000_000, gt=0)
    max_batch_files: int = Field(64, ge=1, description="Files one POST /v1/batches may carry.")
    max_batch_bytes: int = Field(
        256 * 1024 * 1024,
        gt=0,
        description="Request body limit of POST /v1/batches (all its files and fields).",
    )
    decode_slots: int | None = Field(
        None,
        ge=1,
        description="Uploads the gateway fully decodes at once (each holds an image's pixels); "
        "default: the CPUs this process may use (cgroup quota, CPU affinity).",
    )

    # Serving.
    auth_enabled: bool = True
    batch_size: int = Field(16, ge=1)
    batch_wait_ms: int = Field(
        0,
        ge=0,
        description="How long a batch that took every queued job waits for more to arrive. "
        "0: none; under load batches fill by themselves, since jobs queue while one runs.",
    )
    inference_backend: Literal["auto", "int8", "onnx", "torch"] = "auto"
    inference_device: Literal["cpu", "cuda"] = Field(
        "cpu", description="Where a worker runs the model; `eldefect worker --device` sets it."
    )
    model_check_interval_s: float = Field(10.0, gt=0)
    model_retry_backoff_s: float = Field(
        5.0, gt=0, description="Wait before retrying a model version that failed to load."
    )
    model_retry_backoff_max_s: float = Field(
        300.0, gt=0, description="Cap of that wait, which doubles with each failure."
    )
    model_unavailable_fail_after_s: float = Field(
        600.0,
        gt=0,
        description="A job queued this long while no live worker serves a model ends "
        "`failed` with code model_unavailable.",
    )
    requeue_after_s: float = Field(60.0, gt=0, description="Sweep re-enqueues older queued jobs.")
    running_timeout_s: float = Field(300.0, gt=0, description="Sweep fails/requeues stuck jobs.")
    max_attempts: int = Field(
        3, ge=1, description="Claims of one job before the sweep fails it as worker_lost."
    )
    sweep_interval_s: float = Field(
        5.0, gt=0, description="How often each worker runs the sweep (in its own thread)."
    )
    heartbeat_interval_s: float = Field(
        5.0, gt=0, description="How often each worker records itself in the workers table."
    )
    worker_stale_after_s: float = Field(
        30.0,
        gt=0,
        description="A worker not seen for this long counts as gone (routing, /readyz).",
    )
    image_retention_days: int = Field(
        30,
        ge=0,
        description="Days an ended job keeps its image bytes (results stay); 0 keeps them forever.",
    )
    prune_interval_s: float = Field(
        3600.0, gt=0, description="How often beat deletes images past their retention."
    )
    inference_queue: Queue = Field(
        Queue.INFERENCE_CPU,
        description="Where inference tasks go while no live inference worker is known; "
        "otherwise they go to a queue with live workers, GPU first.",
    )
    queue_cache_s: float = Field(
        2.0, ge=0, description="How long the gateway reuses its read of the live queues."
    )

    # Drift (monitoring/drift.py, docs/monitoring.md: the defaults come from ELPV measurements).
    drift_interval_s: float = Field(300.0, gt=0, description="How often beat runs a drift check.")
    drift_window_size: int = Field(
        200, ge=1, description="Most served images of the production version in one window."
    )
    drift_window_mode: Literal["latest", "tumbling"] = Field(
        "latest",
        description="`latest`: the newest drift_window_size results at every check (windows "
        "overlap); `tumbling`: the results after the previous conclusive window (no overlap).",
    )
    drift_max_age_s: float = Field(
        7 * 24 * 3600.0, gt=0, description="Results older than this stay out of any window."
    )
    drift_min_n: int = Field(
        50, ge=1, description="Smaller windows report insufficient_data and never alarm."
    )
    drift_z_threshold: float = Field(
        4.0, gt=0, description="|z| an input statistic must reach to drift (with the effect)."
    )
    drift_effect_threshold: float = Field(
        0.5, gt=0, description="|d| (shift in reference stds) an input statistic must reach."
    )
    drift_rate_z_threshold: float = Field(
        4.0, gt=0, description="|z| a class's predicted positive rate must reach to drift."
    )
    drift_rate_effect_threshold: float = Field(
        0.3, gt=0, description="|Cohen's h| a class's predicted positive rate must reach."
    )

    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(8000, ge=1, le=65535)
    gateway_wait_poll_s: float = Field(
        0.1, gt=0, description="How often the gateway's one poller checks jobs held by ?wait."
    )
    gateway_token_cache_s: float = Field(
        5.0,
        ge=0,
        description="How long a gateway process reuses a token it found valid (a revoked "
        "token is refused at the latest this long after); 0 checks every request.",
    )
    gateway_threads: int = Field(
        16,
        ge=1,
        description="Threads a gateway process runs its blocking work in (database, upload "
        "checks); fewer than the database pool's 30 connections, so none waits for one.",
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
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    # Retraining (docs/retraining.md): when a trigger fires, what it trains, how it is gated.
    retrain_check_interval_s: float = Field(
        60.0, gt=0, description="How often beat decides whether to retrain (and sweeps triggers)."
    )
    retrain_on_drift: bool = Field(True, description="Fire on K consecutive `drift` verdicts.")
    retrain_drift_reports: int = Field(
        3, ge=1, description="K: consecutive drift reports (insufficient_data skipped) that fire."
    )
    retrain_on_reviews: bool = Field(True, description="Fire when enough new reviews came in.")
    retrain_min_reviews: int = Field(
        200, ge=1, description="R: reviewed jobs newer than the production model's data."
    )
    retrain_on_schedule: bool = Field(True, description="Fire every retrain_every_s.")
    retrain_every_s: float = Field(
        7 * 24 * 3600.0, gt=0, description="T: time since the last trigger (or model) to fire."
    )
    retrain_cooldown_s: float = Field(
        6 * 3600.0, ge=0, description="No automatic trigger this soon after the last one ended."
    )
    retrain_config: Path | None = Field(
        None, description="Training config (YAML) of retraining; data.root is the base dataset."
    )
    retrain_holdout_fraction: float = Field(
        0.2, ge=0, lt=1, description="Share of reviewed jobs (by job id hash) never trained on."
    )
    retrain_eval_data: Path | None = Field(
        None, description="Fixed evaluation folder for the gate, never trained on."
    )
    retrain_eval_format: Literal["voc", "elpv"] = "voc"
    retrain_eval_cell_type: Literal["mono", "poly"] | None = Field(
        None, description="ELPV evaluation folder: only this cell type."
    )
    retrain_ap_margin: float = Field(
        0.02, ge=0, description="Gate: challenger macro AP may trail the champion's by this."
    )
    retrain_recall_margin: float = Field(
        0.05, ge=0, description="Gate: any class's recall may drop by at most this."
    )
    retrain_min_holdout: int = Field(
        10, ge=1, description="Held-back reviews needed before they are a gate set."
    )
    auto_promote: bool = Field(
        False, description="Move `production` to a challenger that passed the gate."
    )
    retrain_lease_s: float = Field(
        120.0, gt=0, description="A training worker renews its trigger's lease within this."
    )
    retrain_queued_timeout_s: float = Field(
        3 * 3600.0,
        gt=0,
        description="A trigger no training worker took within this is failed (frees the slot).",
    )
    retrain_device: Literal["cpu", "cuda"] = Field("cpu", description="Where retraining runs.")

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_capitals(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("broker_url")
    @classmethod
    def _a_known_transport(cls, value: str) -> str:
        # Celery would otherwise start and hang (worker) or fail each enqueue (gateway) on a
        # typo; kombu names the transport before any "+" (sqla+postgresql://), and ";"
        # separates failover brokers.
        from kombu.transport import TRANSPORT_ALIASES

        for url in value.split(";"):
            scheme, sep, _ = url.strip().partition("://")
            transport = scheme.split("+", 1)[0]
            if not sep or transport not in TRANSPORT_ALIASES:
                raise ValueError(
                    f"{redact_url(url.strip())!r} names no broker transport kombu knows: "
                    "expected <transport>://..., e.g. redis://host:6379/0 or filesystem://"
                )
        return value

    @field_validator("inference_queue")
    @classmethod
    def _an_inference_queue(cls, value: Queue) -> Queue:
        if value not in INFERENCE_QUEUES:
            allowed = ", ".join(INFERENCE_QUEUES)
            raise ValueError(f"{value} is not an inference queue (one of {allowed})")
        return value

    @model_validator(mode="after")
    def _defaults_under_var_dir(self) -> Settings:
        # Embedded stores follow var_dir unless named on their own: a process started with
        # ELDEFECT_VAR_DIR must never open a different (empty) database than it was told to.
        if "database_url" not in self.model_fields_set:
            self.database_url = f"sqlite:///{self.var_dir}/eldefect.db"
        if "mlflow_tracking_uri" not in self.model_fields_set:
            self.mlflow_tracking_uri = f"sqlite:///{self.var_dir}/mlflow.db"
        return self

    @property
    def uses_embedded_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")

    @property
    def effective_decode_slots(self) -> int:
        return self.decode_slots or available_cpus()

    def ensure_var_dir(self) -> Path:
        self.var_dir.mkdir(parents=True, exist_ok=True)
        return self.var_dir


class SettingsError(ValueError):
    """The environment (or `.env`) sets a value no process can run with."""


def _describe(exc: ValidationError) -> str:
    # The values are not echoed: a database or broker URL may carry a password.
    reasons = []
    for error in exc.errors(include_url=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        name = f"ELDEFECT_{field.upper()}" if field in Settings.model_fields else field
        reasons.append(f"{name}: {error['msg']}" if name else error["msg"])
    return "invalid settings: " + "; ".join(reasons)


@lru_cache
def get_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


@contextmanager
def store_under(folder: Path) -> Iterator[Settings]:
    """Within the block, the process's var dir and MLflow registry (SQLite) live in `folder`;
    the environment and settings are restored after it (benchmarks and tests run in-process)."""
    names = ("ELDEFECT_VAR_DIR", "MLFLOW_TRACKING_URI")
    saved = {name: os.environ.get(name) for name in names}
    os.environ["ELDEFECT_VAR_DIR"] = str(folder)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    get_settings.cache_clear()
    try:
        yield get_settings()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        get_settings.cache_clear()


def _cgroup_cpu_limit(root: Path) -> float | None:
    """CPUs granted by the cgroup quota (v2 `cpu.max`, else v1 `cpu.cfs_quota_us`), if any."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may really use: its affinity, capped by a cgroup CPU quota.

    `os.cpu_count()` is the host's count; in a container limited to 2 CPUs on a 64-core host
    it would size pools thirty times too large.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    limit = _cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        cpus = min(cpus or 1, max(1, int(limit)))
    return max(1, cpus or 1)


_SECRET_QUERY_KEYS = {"password", "passwd", "pwd", "secret", "token", "access_token", "key"}


def redact_url(url: str) -> str:
    """The URL with its password (and secret-looking query values) replaced by `***`.

    For log lines and probe messages: `postgresql://app:s3cret@db/x` -> `postgresql://app:***@db/x`.
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            userinfo, _, host = netloc.rpartition("@")
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:***@{host}"
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        secret_query = any(k.lower() in _SECRET_QUERY_KEYS for k, _v in pairs)
        if netloc == parts.netloc and not secret_query:
            return url  # nothing to hide (and `sqlite:///x` keeps its three slashes)
        safe = [(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs]
        query = urlencode(safe, safe="*") if pairs else parts.query
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:  # not parseable as a URL: show nothing of it rather than a secret
        return "<unparseable URL>"


def redact_secrets(text: str, urls: list[str]) -> str:
    """`text` with the password of any of `urls` masked (driver errors may echo a DSN)."""
    for url in urls:
        try:
            password = urlsplit(url).password
        except ValueError:
            continue
        for form in {password, unquote(password)} if password else ():
            text = text.replace(form, "***")
    return text
