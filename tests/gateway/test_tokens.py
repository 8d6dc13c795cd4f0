"""TokenCache: a checked token is reused for ttl_s, then checked again; never with ttl 0."""

from __future__ import annotations

import pytest

from gateway import tokens
from gateway.tokens import TokenCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_token_is_reused_until_its_time_runs_out() -> None:
    clock = Clock()
    cache: TokenCache[str] = TokenCache(5.0, clock=clock)
    assert cache.get("secret") is None
    cache.put("secret", "line-1")
    clock.now += 4.9
    assert cache.get("secret") == "line-1"
    assert cache.get("other") is None
    clock.now += 0.2
    assert cache.get("secret") is None


def test_a_zero_time_checks_every_request() -> None:
    cache: TokenCache[str] = TokenCache(0.0)
    cache.put("secret", "line-1")
    assert cache.get("secret") is None


def test_the_cache_keeps_no_plaintext_token() -> None:
    cache: TokenCache[str] = TokenCache(5.0)
    cache.put("secret", "line-1")
    assert "secret" not in cache._entries


def test_a_full_cache_drops_expired_tokens_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "MAX_TOKENS", 3)
    clock = Clock()
    cache: TokenCache[str] = TokenCache(5.0, clock=clock)
    cache.put("old", "a")
    clock.now += 3
    cache.put("b", "b")
    cache.put("c", "c")
    clock.now += 3  # "old" expired, "b" and "c" not
    cache.put("d", "d")
    assert [cache.get(t) for t in ("old", "b", "c", "d")] == [None, "b", "c", "d"]
