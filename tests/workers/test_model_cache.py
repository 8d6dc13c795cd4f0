"""ModelCache: first load, swap between batches in the background, failures keep serving."""

from __future__ import annotations

import pickle
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.workers.conftest import TinyRegistry
from tests.workers.test_inference import FakeModel
from workers.model_cache import ModelCache, ModelUnavailableError


class Registry:
    def __init__(self, version: str | None) -> None:
        self.version = version
        self.loading = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.broken: set[str] = set()

    def resolve(self) -> str | None:
        return self.version

    def load(self, version: str) -> FakeModel:
        self.loading.set()
        assert self.release.wait(10)
        if version in self.broken:
            raise RuntimeError(f"version {version} is broken")
        return FakeModel(version)


def cache_for(registry: Registry, interval: float = 60.0) -> ModelCache:
    return ModelCache(resolve=registry.resolve, load=registry.load, check_interval_s=interval)


def test_no_model_under_the_alias_is_reported_as_unavailable() -> None:
    with pytest.raises(ModelUnavailableError):
        cache_for(Registry(None)).get()


def test_new_version_loads_beside_the_old_and_batches_never_wait() -> None:
    registry = Registry("1")
    cache = cache_for(registry)
    try:
        assert cache.get().version == "1"
        registry.version, registry.loading = "2", threading.Event()
        registry.release.clear()
        cache.refresh()  # a promotion event
        assert registry.loading.wait(5)
        started = time.monotonic()
        assert cache.get().version == "1", "while version 2 loads, batches keep using 1"
        assert time.monotonic() - started < 0.1
        registry.release.set()
        deadline = time.monotonic() + 5
        while cache.get().version != "2" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert cache.get().version == "2" and cache.swaps == 1
    finally:
        cache.stop()


def test_periodic_check_notices_the_alias_moving() -> None:
    registry = Registry("1")
    cache = cache_for(registry, interval=0.05)
    try:
        cache.get()
        registry.version = "7"
        deadline = time.monotonic() + 5
        while cache.get().version != "7" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert cache.get().version == "7"
    finally:
        cache.stop()


def test_a_version_that_fails_to_load_leaves_the_old_one_serving() -> None:
    registry = Registry("1")
    cache = cache_for(registry)
    cache.get()
    registry.version = "2"
    registry.broken.add("2")
    assert cache.check_now() is False
    assert cache.get().version == "1"
    assert cache.check_now() is False, "a broken version is not reloaded on every check"


class Counting(Registry):
    """A registry whose loads are counted."""

    def __init__(self, version: str | None) -> None:
        super().__init__(version)
        self.loads = 0

    def load(self, version: str) -> FakeModel:
        self.loads += 1
        return super().load(version)


def test_a_first_load_slower_than_the_check_interval_is_not_loaded_twice() -> None:
    registry = Counting("1")
    registry.release.clear()
    cache = cache_for(registry, interval=0.02)
    got: list[str] = []
    first = threading.Thread(target=lambda: got.append(cache.get().version))
    try:
        first.start()
        assert registry.loading.wait(5)
        time.sleep(0.3)  # many check intervals pass while the first load runs
        registry.release.set()
        first.join(5)
        time.sleep(0.1)  # and a few more checks after it
        assert got == ["1"]
        assert registry.loads == 1, "the background check loaded beside the first load"
    finally:
        registry.release.set()
        cache.stop()


def test_a_model_that_fails_to_load_backs_off_instead_of_reloading_per_message() -> None:
    registry = Counting("1")
    registry.broken.add("1")
    cache = ModelCache(
        resolve=registry.resolve,
        load=registry.load,
        check_interval_s=3600,
        backoff_s=1.0,
        backoff_max_s=1.6,
    )
    try:
        with pytest.raises(ModelUnavailableError, match="version 1 is broken"):
            cache.get()
        for _ in range(20):  # twenty messages arrive during the back-off: no load for any
            with pytest.raises(ModelUnavailableError, match="next try in"):
                cache.get()
        assert registry.loads == 1
        state = cache.state()
        assert state.version is None and state.error and "version 1 is broken" in state.error
        time.sleep(1.1)
        with pytest.raises(ModelUnavailableError):
            cache.get()  # the back-off ran out: one more try, which fails again
        assert registry.loads == 2
        # The second wait doubled (2 s) but is capped at 1.6 s; the margins are wide so a
        # stalled test process on a busy machine does not land on the other side of it.
        time.sleep(1.1)
        with pytest.raises(ModelUnavailableError, match="next try in"):
            cache.get()
        time.sleep(0.6)
        registry.broken.clear()  # fixed (e.g. the file is back)
        assert cache.get().version == "1" and registry.loads == 3
        assert cache.state().error is None and cache.state().version == "1"
    finally:
        cache.stop()


def test_a_promotion_event_retries_a_failed_version_at_once() -> None:
    registry = Counting("1")
    registry.broken.add("1")
    cache = ModelCache(
        resolve=registry.resolve, load=registry.load, check_interval_s=3600, backoff_s=3600
    )
    try:
        with pytest.raises(ModelUnavailableError):
            cache.get()
        registry.broken.clear()
        cache.refresh()
        deadline = time.monotonic() + 5
        while cache.current is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert cache.get().version == "1" and registry.loads == 2
    finally:
        cache.stop()


class _TouchOnLoad:
    """A pickle payload: unpickling it creates `marker` (any code could run instead)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Path.touch, (self.marker,))


def test_a_version_whose_weights_carry_a_pickled_payload_is_refused_and_never_run(
    served_model: TinyRegistry, tmp_path: Path
) -> None:
    import mlflow
    from mlflow import MlflowClient

    from eldefect.registry import configure_mlflow, load_model, log_model, model_uri
    from eldefect.settings import get_settings
    from workers.model_cache import _registry_cache

    settings = get_settings()
    cache = _registry_cache(settings)
    try:
        assert cache.get().version == "1"
        # Version 3: version 1's weights logged again, then its state_dict swapped for a
        # pickle that would touch a marker file when loaded the way pickles are.
        model, card = load_model(model_uri(served_model.name, "1"))
        configure_mlflow(settings)
        with mlflow.start_run():
            uri = log_model(model, card)
        client = MlflowClient()
        version = str(mlflow.register_model(uri, served_model.name).version)
        logged = client.get_logged_model(uri.removeprefix("models:/"))
        weights = Path(logged.artifact_location.removeprefix("file://")) / "state_dict.pt"
        assert weights.is_file()
        marker, proof = tmp_path / "payload-ran", tmp_path / "payload-works"
        pickle.loads(pickle.dumps(_TouchOnLoad(proof)))
        assert proof.exists(), "the payload runs when unpickled the usual way"
        weights.write_bytes(pickle.dumps(_TouchOnLoad(marker)))

        client.set_registered_model_alias(served_model.name, "production", version)
        assert cache.check_now() is False

        assert not marker.exists(), "the payload never ran"
        assert cache.get().version == "1", "the old version keeps serving"
        error = cache.state().error or ""
        assert f"version {version}" in error and "UnsafeModelError" in error
        assert "state_dict.pt is not plain weights" in error
    finally:
        cache.stop()


def test_a_model_logged_as_a_pickled_module_is_refused(
    served_model: TinyRegistry, tmp_path: Path
) -> None:
    """Models logged before weights-only (mlflow.pytorch, pickle format) do not load."""
    import mlflow

    from eldefect.artifact import UnsafeModelError
    from eldefect.registry import configure_mlflow, load_model, model_uri
    from eldefect.settings import get_settings

    model, _card = load_model(model_uri(served_model.name, "1"))
    configure_mlflow(get_settings())
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(
            model, name="model", serialization_format="pickle", pip_requirements=["torch"]
        )
    with pytest.raises(UnsafeModelError, match="not stored as eldefect weights"):
        load_model(info.model_uri)
