"""At most one pending wake-up message per inference queue, where the broker can tell.

A broker message only says "jobs are waiting": the database decides which jobs a batch
claims. One pending message per queue therefore wakes a worker as surely as one per job, for
a fraction of the broker and Celery work (a per-job message, its delivery, its ack and the
no-op claim of a job another batch already took were a fifth of a worker's CPU).

The protocol, on Redis: after committing its jobs, a sender sets the queue's marker (SET NX
with a TTL) and sends a message only if the marker was not already there. A worker deletes
the marker BEFORE it claims, then drains batches until one comes back short
(workers/inference.py, `drain`). A job committed before that deletion is claimed by that drain
(or by a batch running elsewhere); a job committed after it either sets the marker again and
sends, or finds it set by another sender whose message is on its way and will, in turn,
delete and drain. So no job waits without a message on its way, as with one message per job.
The TTL bounds how long a lost message (a broker restart) holds the marker; the workers'
sweep re-sends jobs queued too long, as it always did.

The embedded broker (kombu's filesystem transport) has no shared store to hold a marker, so
there every send goes out.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import redis

    from eldefect.settings import Settings

log = logging.getLogger(__name__)

# Long enough to cover a message waiting for a busy worker, short enough that a lost one
# holds back wake-ups for a moment only.
WAKE_TTL_S = 2.0
_TIMEOUT_S = 2.0  # like the gateway's broker connection timeout: fail fast, the sweep re-sends
_REDIS_SCHEMES = ("redis://", "rediss://")


def one_per_batch(job_ids: Sequence[str], batch_size: int) -> Sequence[str]:
    """The jobs to send wake-ups for: a batch claims up to `batch_size` queued jobs, whichever
    message woke it, so one message per `batch_size` jobs wakes as many batches as needed."""
    return job_ids[::batch_size]


def marker_key(queue: str) -> str:
    return f"eldefect.wake.{queue}"


class WakeMarker(Protocol):
    def mark(self, queue: str) -> bool:
        """True when no wake-up is pending for `queue`: the caller must send one now."""

    def clear(self, queue: str) -> None:
        """A worker took a wake-up for `queue` and is about to claim."""


class EverySend:
    """No shared store (the embedded broker): every send goes out."""

    def mark(self, queue: str) -> bool:
        return True

    def clear(self, queue: str) -> None:
        return None


class RedisMarker:
    """The marker as a Redis key with a TTL, on the broker's own server."""

    def __init__(self, url: str, ttl_s: float = WAKE_TTL_S) -> None:
        import redis

        self._ttl_ms = int(ttl_s * 1000)
        self._client: redis.Redis = redis.Redis.from_url(
            url, socket_timeout=_TIMEOUT_S, socket_connect_timeout=_TIMEOUT_S
        )

    def mark(self, queue: str) -> bool:
        import redis  # already loaded by __init__: a dictionary lookup

        try:
            return bool(self._client.set(marker_key(queue), b"1", nx=True, px=self._ttl_ms))
        except redis.RedisError:  # cannot tell: send, as if nothing were pending
            return True

    def clear(self, queue: str) -> None:
        import redis

        try:
            self._client.delete(marker_key(queue))
        except redis.RedisError as exc:  # the marker expires on its own within its TTL
            log.warning("could not clear the wake-up marker of %s (%s)", queue, exc)


@functools.cache
def _redis_marker(url: str) -> RedisMarker:
    return RedisMarker(url)


def coalesces(settings: Settings) -> bool:
    """Whether wake-ups on this broker are coalesced (one pending per queue)."""
    return settings.broker_url.startswith(_REDIS_SCHEMES)


def wake_marker(settings: Settings) -> WakeMarker:
    """The marker for `settings.broker_url`, one per URL and process (redis-py's connection
    pool is thread-safe)."""
    return _redis_marker(settings.broker_url) if coalesces(settings) else EverySend()
