"""PostgreSQL pool: a connection idle past PING_AFTER_IDLE_S is pinged, a busy one is not."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import create_engine, text

from db import session as db_session
from db.session import get_engine, session_scope


def _pid(url: str) -> int:
    with session_scope(url) as session:
        return int(session.scalar(text("SELECT pg_backend_pid()")))


def _count_pings(url: str, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    dialect = get_engine(url).dialect
    pings: list[int] = []
    real = dialect.do_ping

    def counted(dbapi_conn: Any) -> bool:
        pings.append(1)
        return real(dbapi_conn)

    monkeypatch.setattr(dialect, "do_ping", counted)
    return pings


def test_a_connection_in_steady_use_is_not_pinged(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_session, "PING_AFTER_IDLE_S", 60.0)
    try:
        _pid(postgres_url)
        pings = _count_pings(postgres_url, monkeypatch)
        for _ in range(5):
            _pid(postgres_url)
        assert pings == []
    finally:
        get_engine(postgres_url).dispose()


def test_an_idle_connection_the_server_dropped_is_replaced_before_use(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        first = _pid(postgres_url)
        admin = create_engine(postgres_url)  # not the pool's: the server ends the pooled one
        with admin.connect() as other:
            other.execute(text(f"SELECT pg_terminate_backend({first})"))
        admin.dispose()
        monkeypatch.setattr(db_session, "PING_AFTER_IDLE_S", 0.0)  # it has been idle long
        pings = _count_pings(postgres_url, monkeypatch)
        second = _pid(postgres_url)  # no error: the ping found it dead, a new one served
        assert second != first and pings
    finally:
        get_engine(postgres_url).dispose()
