"""Gateway fixtures: a migrated database, an app on the embedded defaults, station tokens."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from db import jobs as crud
from db.migrate import upgrade
from db.models import TokenRole
from db.session import get_engine, session_scope
from eldefect.settings import Settings, get_settings
from gateway.app import create_app


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite file migrated to head; tests copy it instead of migrating again."""
    path = tmp_path_factory.mktemp("template") / "eldefect.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    get_engine(url).dispose()
    return path


@pytest.fixture
def settings(settings_env: Path, migrated_sqlite: Path) -> Settings:
    """Embedded defaults under a temporary var/, with the schema in place."""
    shutil.copy(migrated_sqlite, settings_env / "eldefect.db")
    return get_settings()


@pytest.fixture
def make_client(
    settings_env: Path, migrated_sqlite: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., TestClient]]:
    """Build a client on fresh settings; keyword arguments become ELDEFECT_* variables."""
    clients: list[TestClient] = []
    shutil.copy(migrated_sqlite, settings_env / "eldefect.db")

    def make(**env: object) -> TestClient:
        for key, value in env.items():
            monkeypatch.setenv(f"ELDEFECT_{key.upper()}", str(value))
        get_settings.cache_clear()
        client = TestClient(create_app(get_settings()), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def issue_token(database_url: str, station: str, role: str = "station") -> str:
    with session_scope(database_url) as session:
        row = crud.get_or_create_station(session=session, name=station)
        return crud.create_token(session=session, station_id=row.id, role=TokenRole(role))


@pytest.fixture
def auth(client: TestClient) -> dict[str, str]:
    """Authorization header of station "line-1"."""
    url = client.app.state.settings.database_url  # type: ignore[attr-defined]
    return {"Authorization": f"Bearer {issue_token(url, 'line-1')}"}


def job_count(database_url: str) -> int:
    with session_scope(database_url) as session:
        return crud.count_jobs(session=session)
