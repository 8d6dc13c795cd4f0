"""`eldefect token create/list/revoke`, `eldefect db upgrade/current`, gateway migrate default."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from db import jobs as crud
from db.migrate import head
from db.session import session_scope
from eldefect.settings import Settings, get_settings
from gateway.cli import _should_migrate, db, gateway, token


def test_db_upgrade_then_token_create_list_revoke(settings_env: Path) -> None:
    runner = CliRunner()
    url = get_settings().database_url

    upgraded = runner.invoke(db, ["upgrade"])
    assert upgraded.exit_code == 0, upgraded.output
    revision = head()
    assert revision is not None and revision in runner.invoke(db, ["current"]).output

    created = runner.invoke(token, ["create", "--station", "line-1"])
    assert created.exit_code == 0, created.output
    plaintext = created.output.strip()
    assert len(plaintext) >= 40
    with session_scope(url) as session:
        station = crud.station_for_token(session=session, token=plaintext)
        assert station is not None and station.name == "line-1"

    listed = runner.invoke(token, ["list"])
    assert listed.exit_code == 0
    assert "line-1" in listed.output and "active" in listed.output
    assert plaintext not in listed.output

    assert runner.invoke(token, ["revoke", "--station", "line-1"]).exit_code == 0
    with session_scope(url) as session:
        assert crud.station_for_token(session=session, token=plaintext) is None
    assert runner.invoke(token, ["revoke", "--station", "nobody"]).exit_code != 0


def test_commands_work_on_a_fresh_embedded_database(
    settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new clone's first `eldefect token create` (docs/api.md) needs no `db upgrade`."""
    from monitoring.cli import drift
    from workers.retrain_cli import retrain

    runner = CliRunner()
    commands = {
        "token": (token, ["create", "--station", "line-1"]),
        "retrain": (retrain, ["status"]),
        "drift": (drift, ["report"]),
    }
    for name, (group, args) in commands.items():
        fresh = settings_env / f"{name}.db"
        monkeypatch.setenv("ELDEFECT_DATABASE_URL", f"sqlite:///{fresh}")
        get_settings.cache_clear()
        result = runner.invoke(group, args)
        assert result.exit_code == 0, result.output
        assert runner.invoke(db, ["current"]).output.startswith(f"current: {head()};"), name


def test_the_gateway_migrates_sqlite_by_default_but_not_postgres() -> None:
    sqlite = Settings(database_url="sqlite:///var/x.db")
    postgres = Settings(database_url="postgresql+psycopg://u@h/db")

    assert _should_migrate(sqlite, None) is True
    assert _should_migrate(postgres, None) is False
    assert _should_migrate(postgres, True) is True
    forced = Settings(database_url="sqlite:///x.db", gateway_migrate=False)
    assert _should_migrate(forced, None) is False


def test_the_gateway_caps_malloc_arenas_before_it_serves(
    settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr("gateway.cli.limit_malloc_arenas", lambda: calls.append("arenas"))
    served: dict[str, object] = {}

    def serve(*_args: object, **kwargs: object) -> None:
        calls.append("serve")
        served.update(kwargs)

    monkeypatch.setattr("uvicorn.run", serve)

    result = CliRunner().invoke(gateway, ["--no-migrate"])

    assert result.exit_code == 0, result.output
    assert calls == ["arenas", "serve"]
    assert served["ws"] == "none"  # no WebSocket routes, so no WebSocket library loaded


def test_commands_are_registered_with_the_eldefect_cli() -> None:
    from eldefect.cli import cli

    result = CliRunner().invoke(cli, ["token", "--help"])
    assert result.exit_code == 0, result.output
    assert "create" in result.output
    assert CliRunner().invoke(cli, ["gateway", "--help"]).exit_code == 0
