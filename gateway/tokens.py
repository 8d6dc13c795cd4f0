"""Bearer tokens the gateway has checked recently, so most requests cost no token query.

A station makes two requests per job (the upload, then the long-poll), each with its token;
looking the token up was a query and a commit every time. A token found valid is reused for
`ttl_s` seconds: a token revoked meanwhile (`eldefect token revoke`) is still accepted by a
gateway process that checked it less than `ttl_s` ago, and refused after that. Unknown or
revoked tokens are never kept, so a new token works at once. `ttl_s = 0` checks every request.

Keyed by the token's SHA-256 (what the database stores), so no plaintext token is kept.
Thread-safe: misses are filled from the thread pool while the event loop reads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from cachetools import TTLCache

from db.jobs import hash_token

T = TypeVar("T")

# Far more tokens than stations; a full cache drops what has expired, then the oldest used.
MAX_TOKENS = 10_000


class TokenCache(Generic[T]):
    def __init__(self, ttl_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._entries: TTLCache[str, T] = TTLCache(MAX_TOKENS, max(ttl_s, 1e-9), timer=clock)
        self._lock = threading.Lock()  # TTLCache is not thread-safe; misses fill from threads

    def get(self, token: str) -> T | None:
        """What this token was found to be less than `ttl_s` ago, else None."""
        if self.ttl_s <= 0:
            return None
        with self._lock:
            return self._entries.get(hash_token(token))

    def put(self, token: str, value: T) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            self._entries[hash_token(token)] = value
