"""The Alembic migrations build exactly the schema of db.models, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from db.migrate import current, head, upgrade
from db.models import Base
from db.session import get_engine


def _drift(url: str) -> list[object]:
    with get_engine(url).connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, Base.metadata))


def _check_fresh_upgrade(url: str) -> None:
    assert current(url) is None
    upgrade(url)
    assert current(url) == head()
    tables = set(inspect(get_engine(url)).get_table_names())
    assert set(Base.metadata.tables) <= tables
    assert _drift(url) == []
    upgrade(url)  # a second run is a no-op
    assert current(url) == head()


def test_migrations_on_empty_sqlite_match_the_models(tmp_path: Path) -> None:
    _check_fresh_upgrade(f"sqlite:///{tmp_path}/fresh.db")


@pytest.mark.postgres
def test_migrations_on_empty_postgres_match_the_models(postgres_url: str) -> None:
    _check_fresh_upgrade(postgres_url)


def test_migration_files_ship_inside_the_package() -> None:
    import db

    root = Path(db.__file__).parent
    assert (root / "alembic.ini").is_file()
    assert (root / "migrations" / "env.py").is_file()
    assert (root / "migrations" / "script.py.mako").is_file()
    # Packages (with __init__.py), so setuptools puts them into the wheel.
    assert (root / "migrations" / "__init__.py").is_file()
    assert (root / "migrations" / "versions" / "__init__.py").is_file()
