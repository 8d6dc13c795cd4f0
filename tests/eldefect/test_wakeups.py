"""The wake-up marker: at most one pending wake-up per queue on Redis, every send elsewhere."""

from __future__ import annotations

import time

import pytest

from eldefect.settings import Settings
from eldefect.wakeups import EverySend, RedisMarker, one_per_batch, wake_marker


@pytest.mark.redis
def test_a_queue_is_marked_once_until_a_worker_clears_it(redis_url: str) -> None:
    marker = RedisMarker(redis_url)
    assert marker.mark("inference.cpu") is True  # nothing pending: send
    assert marker.mark("inference.cpu") is False  # pending: that wake-up covers this job
    assert marker.mark("inference.gpu") is True  # queues are marked apart
    marker.clear("inference.cpu")  # a worker took it and is about to claim
    assert marker.mark("inference.cpu") is True


@pytest.mark.redis
def test_a_lost_wake_up_holds_the_marker_only_for_its_ttl(redis_url: str) -> None:
    marker = RedisMarker(redis_url, ttl_s=0.2)
    assert marker.mark("inference.cpu") is True
    time.sleep(0.3)  # its message was lost: nobody cleared the marker
    assert marker.mark("inference.cpu") is True


def test_an_unreachable_redis_means_send_anyway() -> None:
    marker = RedisMarker("redis://127.0.0.1:9/0")  # nothing listens on port 9
    assert marker.mark("inference.cpu") is True
    marker.clear("inference.cpu")  # logged, not raised


def test_only_redis_brokers_coalesce() -> None:
    embedded = Settings(broker_url="filesystem://")
    assert isinstance(wake_marker(embedded), EverySend)
    assert all(EverySend().mark("inference.cpu") for _ in range(3))
    redis = Settings(broker_url="redis://127.0.0.1:6379/0")
    assert isinstance(wake_marker(redis), RedisMarker)


def test_one_wake_up_per_batch_of_jobs() -> None:
    assert list(one_per_batch([str(i) for i in range(17)], 8)) == ["0", "8", "16"]
