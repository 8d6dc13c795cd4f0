"""Engine and session factory for SQLite (embedded default) and PostgreSQL.

Callers pass the URL (from eldefect.settings); db imports nothing of ours.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker

# The errors that mean the database is away (restart, failover, network, a full pool), not a
# bug: worth another try later. Celery's autoretry_for takes classes, hence the tuple.
DATABASE_OUTAGES = (PoolTimeoutError, OperationalError, InterfaceError)


def is_database_outage(exc: BaseException) -> bool:
    """The database is unreachable or went away, so the same work may pass later."""
    if isinstance(exc, DATABASE_OUTAGES):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets the gateway read while a worker writes; busy_timeout waits out short locks
    # instead of failing with "database is locked".
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def is_embedded(url: str) -> bool:
    """An embedded SQLite database: a developer's own, not shared by other deployments."""
    return make_url(url).get_backend_name() == "sqlite"


def ready_database(url: str) -> str:
    """`url`, its schema brought to head first when it is the embedded SQLite database.

    So that `eldefect token create` (or any command reading the database) works on a fresh
    clone before the gateway ever ran. A shared database (PostgreSQL) is migrated on
    purpose, by `eldefect db upgrade`, never as a side effect.
    """
    if is_embedded(url):
        from db.migrate import upgrade_if_behind  # Alembic is imported only here

        upgrade_if_behind(url)
    return url


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    """One engine per URL per process (engines own connection pools)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(url, pool_size=10, max_overflow=20)
    _ping_idle_connections(engine)
    return engine


# A pooled connection used less than this long ago is taken as alive. pool_pre_ping pinged
# on every checkout: a round trip per transaction, five per job, each a few ms on a busy
# two-core machine. A connection idle for longer (the database may have restarted since) is
# pinged first, as pool_pre_ping would. A restart under steady traffic then fails the first
# statement on a stale connection with OperationalError, which every caller already takes
# as the database being briefly away (a 503, a task retry), and SQLAlchemy replaces the
# whole pool's connections at that first disconnect.
PING_AFTER_IDLE_S = 1.0
_LAST_USED = "eldefect_last_used"


def _ping_idle_connections(engine: Engine) -> None:
    def mark(_dbapi_conn: Any, record: Any) -> None:
        record.info[_LAST_USED] = time.monotonic()

    def ping_if_idle(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get(_LAST_USED, 0.0) < PING_AFTER_IDLE_S:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:  # dead: the pool drops it and checks out another
            raise DisconnectionError(f"stale pooled connection: {exc}") from exc

    event.listen(engine.pool, "connect", mark)
    event.listen(engine.pool, "checkin", mark)
    event.listen(engine.pool, "checkout", ping_if_idle)


@lru_cache(maxsize=8)
def get_sessionmaker(url: str) -> sessionmaker[Session]:
    # Cached: each sessionmaker makes a Session subclass, and every request asks for one.
    return sessionmaker(get_engine(url), expire_on_commit=False)


@lru_cache(maxsize=8)
def get_autocommit_sessionmaker(url: str) -> sessionmaker[Session]:
    """Sessions in which every statement commits on its own, sharing the engine's pool.

    For reads and for writes that are a single statement (a claim): no BEGIN, COMMIT or
    ROLLBACK travels to the server, so each costs one round trip instead of three. Anything
    that must be atomic over several statements uses `session_scope` instead.
    """
    engine = get_engine(url).execution_options(isolation_level="AUTOCOMMIT")
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = get_sessionmaker(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
