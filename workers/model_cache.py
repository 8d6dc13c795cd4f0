"""The model a worker serves, and the swap to a new version when the registry alias moves.

A background thread checks the alias every `model_check_interval_s` (one cheap registry
call), and at once when a promotion event arrives (`refresh()`, called by the remote-control
command in workers/control.py). A new version is loaded in that thread, beside the one in
service, and replaces it with a single reference assignment. A batch takes the reference once
(`get()`) and keeps it to its end, so a swap happens between batches, never inside one, and
no batch waits for a load except the very first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from eldefect.settings import Settings, get_settings
from monitoring import metrics

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


class ServingModel(Protocol):
    """What a worker needs of eldefect.predictor.Predictor."""

    name: str
    version: str

    def predict(self, images: Any) -> np.ndarray: ...

    def result(self, probs_row: np.ndarray) -> dict[str, Any]: ...


Resolver = Callable[[], "str | None"]
Loader = Callable[[str], ServingModel]


class ModelUnavailableError(RuntimeError):
    """No version sits under the alias yet (or it cannot be loaded): retry later."""


class ModelCache:
    """Holds the served model; swaps in a new version in the background."""

    def __init__(
        self,
        *,
        resolve: Resolver,
        load: Loader,
        check_interval_s: float,
        label: str = "model",
    ) -> None:
        self._resolve = resolve
        self._load = load
        self._interval = check_interval_s
        self._label = label
        self._current: ServingModel | None = None
        self._first_load = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._failed_version: str | None = None  # do not retry a broken version every check
        self.swaps = 0

    @property
    def current(self) -> ServingModel | None:
        return self._current

    def get(self) -> ServingModel:
        """The model to use for one batch; loads the first one if none is loaded yet."""
        current = self._current
        if current is not None:
            return current
        with self._first_load:
            if self._current is None:
                version = self._resolve()
                if version is None:
                    raise ModelUnavailableError(f"no version of {self._label} is registered yet")
                self._current = self._load_counted(version)
                metrics.record_model_in_service(name=self._current.name, version=version)
                log.info("serving %s version %s", self._label, version)
            self.start()
            return self._current

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
        """Check the alias now (a promotion event); returns at once, the load runs beside."""
        self._failed_version = None
        self._wake.set()
        self.start()

    def check_now(self) -> bool:
        """Resolve the alias and swap if it moved; True when a new version went into service."""
        try:
            version = self._resolve()
        except Exception:  # the registry being briefly down must not stop serving
            log.warning("cannot resolve the alias of %s; keeping the current one", self._label)
            return False
        current = self._current
        if version is None or version == self._failed_version:
            return False
        if current is not None and str(current.version) == str(version):
            return False
        log.info(
            "%s moved to version %s; loading it beside the one in service", self._label, version
        )
        started = time.monotonic()
        try:
            fresh = self._load_counted(version)
        except Exception:  # a broken new version must not take down the one serving
            log.exception(
                "cannot load %s version %s; keeping the current one", self._label, version
            )
            self._failed_version = version
            return False
        with self._first_load:
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

    def _load_counted(self, version: str) -> ServingModel:
        try:
            model = self._load(version)
        except Exception:
            metrics.record_model_load(ok=False)
            raise
        metrics.record_model_load(ok=True)
        return model

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
