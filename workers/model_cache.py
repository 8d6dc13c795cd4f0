"""The model a worker serves, and the swap to a new version when the registry alias moves.

A background thread checks the alias every `model_check_interval_s` (one cheap registry
call), and at once when a promotion event arrives (`refresh()`, called by the remote-control
command in workers/control.py). A new version is loaded in that thread, beside the one in
service, and replaces it with a single reference assignment. A batch takes the reference once
(`get()`) and keeps it to its end, so a swap happens between batches, never inside one, and
no batch waits for a load except the very first.

A version that fails to load (corrupt or unsafe artifact, wrong device, missing file) is not
tried again on every message or check: the next try waits `model_retry_backoff_s`, doubling
per failure up to `model_retry_backoff_max_s`; a promotion event tries at once. The failure
is kept as the cache's `state()`, which the worker's heartbeat publishes (workers/heartbeat.py)
so that /readyz can say why no model serves.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from eldefect.settings import Settings, get_settings
from monitoring import metrics

if TYPE_CHECKING:
    import numpy as np

    from eldefect.predictor import PredictionResult

log = logging.getLogger(__name__)


class ServingModel(Protocol):
    """What a worker needs of eldefect.predictor.Predictor."""

    name: str
    version: str
    input_size: int  # the model's square input side: JPEGs decode no larger than needed

    def predict(self, images: Any) -> np.ndarray: ...

    def result(self, probs_row: np.ndarray) -> PredictionResult: ...


Resolver = Callable[[], "str | None"]
Loader = Callable[[str], ServingModel]


class ModelUnavailableError(RuntimeError):
    """No version sits under the alias yet (or it cannot be loaded): retry later."""


@dataclass(frozen=True)
class ModelState:
    """What this worker serves now, and the last reason it could not load a model."""

    version: str | None
    error: str | None


@dataclass(frozen=True)
class _Failure:
    version: str
    reason: str
    count: int
    retry_at: float  # time.monotonic()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:500] if text else type(exc).__name__


class ModelCache:
    """Holds the served model; swaps in a new version in the background."""

    def __init__(
        self,
        *,
        resolve: Resolver,
        load: Loader,
        check_interval_s: float,
        label: str = "model",
        backoff_s: float = 5.0,
        backoff_max_s: float = 300.0,
    ) -> None:
        self._resolve = resolve
        self._load = load
        self._interval = check_interval_s
        self._label = label
        self._backoff_s, self._backoff_max_s = backoff_s, backoff_max_s
        self._current: ServingModel | None = None
        self._first_load = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._failure: _Failure | None = None  # the last version that would not load
        self._error: str | None = None  # why no model (or no newer one) could be loaded
        self.swaps = 0

    @property
    def current(self) -> ServingModel | None:
        return self._current

    def state(self) -> ModelState:
        current = self._current
        return ModelState(str(current.version) if current else None, self._error)

    def get(self) -> ServingModel:
        """The model to use for one batch; loads the first one if none is loaded yet.

        Raises ModelUnavailableError, at once and without loading, while a failed version
        waits out its back-off.
        """
        current = self._current
        if current is not None:
            return current
        self.start()  # from here on the background check retries (and notices promotions)
        with self._first_load:
            if self._current is None:
                version = self._resolve_or_raise()
                waiting = self._backing_off(version)
                if waiting is not None:
                    raise ModelUnavailableError(waiting)
                self._current = self._load_or_raise(version)
                metrics.record_model_in_service(name=self._current.name, version=version)
                log.info("serving %s version %s", self._label, version)
            return self._current

    def _resolve_or_raise(self) -> str:
        try:
            version = self._resolve()
        except Exception as exc:  # the registry unreachable: as good as no model for now
            self._error = f"cannot resolve {self._label}: {_reason(exc)}"
            raise ModelUnavailableError(self._error) from exc
        if version is None:
            self._error = f"no version of {self._label} is registered yet"
            raise ModelUnavailableError(self._error)
        return version

    def _backing_off(self, version: str) -> str | None:
        """Why `version` is not tried now (it failed and its back-off runs), or None."""
        failure = self._failure
        if failure is None or failure.version != version:
            return None
        left = failure.retry_at - time.monotonic()
        if left <= 0:
            return None
        return f"{failure.reason} (next try in {left:.0f} s)"

    def _load_or_raise(self, version: str) -> ServingModel:
        try:
            fresh = self._load(version)
        except Exception as exc:  # any load failure: record, back off, report
            metrics.record_model_load(ok=False)
            failure = self._failure
            count = failure.count + 1 if failure and failure.version == version else 1
            delay = min(self._backoff_s * 2 ** (count - 1), self._backoff_max_s)
            reason = f"cannot load {self._label} version {version}: {_reason(exc)}"
            self._failure = _Failure(version, reason, count, time.monotonic() + delay)
            self._error = reason
            log.error("%s; next try in %.0f s (failure %d)", reason, delay, count)
            raise ModelUnavailableError(reason) from exc
        metrics.record_model_load(ok=True)
        self._failure, self._error = None, None
        return fresh

    def start(self) -> None:
        """Start the background checker (idempotent, also from several threads at once)."""
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._run, name="eldefect-model-check", daemon=True
                )
                self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def refresh(self) -> None:
        """Check the alias now (a promotion event); returns at once, the load runs beside.

        A promotion is a reason to try a failed version again without waiting its back-off.
        """
        self._failure = None
        self._wake.set()
        self.start()

    def check_now(self) -> bool:
        """Resolve the alias and swap if it moved; True when a new version went into service.

        Holds the first-load lock throughout, so it never loads beside a first load still
        running in `get()` (a first load on a busy machine outlasts the check interval): two
        loads at once cost twice the CPU, and their ONNX exports, which patch torch globally
        while they trace, break each other and leave the worker serving eager torch.
        `get()` never waits for it once a model serves.
        """
        with self._first_load:
            current = self._current
            try:
                version = self._resolve_or_raise()
            except ModelUnavailableError:  # the registry briefly down must not stop serving
                log.warning("%s; keeping the current one", self._error)
                return False
            if current is not None and str(current.version) == str(version):
                return False
            if self._backing_off(version) is not None:
                return False
            log.info(
                "%s moved to version %s; loading it beside the one in service",
                self._label,
                version,
            )
            started = time.monotonic()
            try:
                fresh = self._load_or_raise(version)
            except ModelUnavailableError:  # a broken new version must not take down the one serving
                return False
            self._current = fresh
            self.swaps += 1
        metrics.record_model_in_service(name=fresh.name, version=version)
        log.info(
            "now serving %s version %s (was %s; loaded in %.1f s)",
            self._label,
            version,
            current.version if current is not None else "none",
            time.monotonic() - started,
        )
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            self.check_now()


def _registry_cache(settings: Settings) -> ModelCache:
    name, alias = settings.model_name, settings.model_alias

    def resolve() -> str | None:
        from eldefect.registry import resolve_alias

        return resolve_alias(name, alias, settings.mlflow_tracking_uri)

    def load(version: str) -> ServingModel:
        import mlflow

        from eldefect.predictor import load_predictor
        from eldefect.registry import model_uri

        mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
        return load_predictor(
            model_uri(name, version),
            device=settings.inference_device,
            backend=settings.inference_backend,
            name=name,
            version=str(version),
        )

    return ModelCache(
        resolve=resolve,
        load=load,
        check_interval_s=settings.model_check_interval_s,
        label=f"{name}@{alias}",
        backoff_s=settings.model_retry_backoff_s,
        backoff_max_s=settings.model_retry_backoff_max_s,
    )


_cache: ModelCache | None = None
_cache_lock = threading.Lock()


def get_model_cache() -> ModelCache:
    """The process's model cache (worker pools are threads or solo: one per process)."""
    global _cache
    with _cache_lock:
        if _cache is None:
            _cache = _registry_cache(get_settings())
        return _cache
