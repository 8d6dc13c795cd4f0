"""ModelCache: first load, swap between batches in the background, failures keep serving."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from workers.model_cache import ModelCache, ModelUnavailableError


class Loaded:
    def __init__(self, version: str) -> None:
        self.name, self.version = "m", version

    def predict(self, images: Any) -> Any:
        raise NotImplementedError

    def result(self, probs_row: Any) -> dict[str, Any]:
        raise NotImplementedError


class Registry:
    def __init__(self, version: str | None) -> None:
        self.version = version
        self.loading = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.broken: set[str] = set()

    def resolve(self) -> str | None:
        return self.version

    def load(self, version: str) -> Loaded:
        self.loading.set()
        assert self.release.wait(10)
        if version in self.broken:
            raise RuntimeError(f"version {version} is broken")
        return Loaded(version)


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
