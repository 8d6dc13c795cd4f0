"""Fixtures for monitoring tests: the Prometheus binaries (Debian package `prometheus`), and
the worker tests' tiny registered model for the end-to-end stack."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import REQUIRE_SERVICES
from tests.workers.conftest import served_model, tiny_registry

__all__ = ["prometheus_binary", "promtool", "served_model", "tiny_registry"]


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"`{name}` is not installed (Debian package `prometheus`; .ci/run installs it)"
        if REQUIRE_SERVICES:
            pytest.fail(f"{message}; ELDEFECT_REQUIRE_SERVICES=1: it must run")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return _binary("promtool")


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    return _binary("prometheus")
