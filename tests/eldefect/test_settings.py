"""The settings object: defaults that follow var_dir, URLs safe to print, and import weight."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from eldefect.broker import broker_options, embedded_broker_folders
from eldefect.settings import Settings, redact_url
from tests.fresh_python import fresh_python


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("ELDEFECT_DATABASE_URL", "MLFLOW_TRACKING_URI", "ELDEFECT_MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(key, raising=False)


def test_var_dir_moves_every_embedded_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clean_env(monkeypatch)
    var = tmp_path / "elsewhere"
    monkeypatch.setenv("ELDEFECT_VAR_DIR", str(var))
    monkeypatch.chdir(tmp_path)  # the env file and relative defaults would resolve here

    settings = Settings()

    assert settings.database_url == f"sqlite:///{var}/eldefect.db"
    assert settings.mlflow_tracking_uri == f"sqlite:///{var}/mlflow.db"
    assert settings.uses_embedded_broker
    options = broker_options(settings)
    queue, _processed = embedded_broker_folders(settings)
    assert queue.is_relative_to(var) and options["broker_transport_options"]["data_folder_in"]
    assert not (tmp_path / "var").exists(), "nothing opened under the default var/"


def test_urls_set_on_their_own_win_over_var_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clean_env(monkeypatch)
    monkeypatch.setenv("ELDEFECT_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("ELDEFECT_DATABASE_URL", "postgresql+psycopg://u@db/eldefect")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")

    settings = Settings()

    assert settings.database_url == "postgresql+psycopg://u@db/eldefect"
    assert settings.mlflow_tracking_uri == "http://mlflow:5000"


def test_the_default_var_dir_keeps_the_documented_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _clean_env(monkeypatch)
    monkeypatch.delenv("ELDEFECT_VAR_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.database_url == "sqlite:///var/eldefect.db"
    assert settings.mlflow_tracking_uri == "sqlite:///var/mlflow.db"


@pytest.mark.parametrize(
    "url",
    [
        "redis://redis:6379/0",
        "rediss://r:6380/0",
        "filesystem://",
        "sqla+postgresql://u@db/x",
        "redis://a:6379/0;redis://b:6379/0",
        "amqp://guest@rabbit//",
    ],
)
def test_broker_urls_of_known_transports_are_taken(url: str) -> None:
    assert Settings(broker_url=url).broker_url == url


@pytest.mark.parametrize(
    "url", ["foo://x", "redis//redis:6379", "redis:6379", "redis://a:6379/0;bogus://u:pw@b"]
)
def test_a_broker_url_without_a_known_transport_is_refused(url: str) -> None:
    # Celery would start a worker that hangs on such a URL, with no line saying why.
    with pytest.raises(ValidationError, match="names no broker transport") as refused:
        Settings(broker_url=url)
    message = refused.value.errors()[0]["msg"]  # what the CLI prints (not the input)
    assert ":pw@" not in message, "the password is not echoed"


def test_redact_url_hides_passwords_only() -> None:
    assert redact_url("postgresql+psycopg://app:s3cret@db:5432/x") == (
        "postgresql+psycopg://app:***@db:5432/x"
    )
    assert redact_url("redis://:s3cret@redis:6379/0") == "redis://:***@redis:6379/0"
    assert redact_url("redis://redis:6379/0") == "redis://redis:6379/0"
    assert redact_url("sqlite:///var/eldefect.db") == "sqlite:///var/eldefect.db"


def _eldefect_modules() -> list[str]:
    root = Path(__file__).parents[2] / "eldefect"
    return sorted(
        "eldefect." + ".".join(p.relative_to(root).with_suffix("").parts)
        for p in root.rglob("*.py")
        if p.name != "__init__.py"
    )


def test_the_ml_core_imports_none_of_the_serving_packages() -> None:
    """DESIGN.md: eldefect (every module of it) imports none of db, gateway, workers,
    monitoring. One fresh interpreter imports them all, then looks at what came along."""
    modules = ["eldefect", *_eldefect_modules()]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules}"
        " & {'db', 'gateway', 'workers', 'monitoring'})\n"
        "print(','.join(bad))\n"
    )
    out = fresh_python(code, timeout=300)
    assert len(modules) > 20 and out.strip() == "", f"eldefect imports {out}"
