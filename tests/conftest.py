"""Shared fixtures: isolated settings, real services, real data, a registered model.

Real-service fixtures connect to the real servers. When ELDEFECT_REQUIRE_SERVICES=1 (set by
.ci/run) an unreachable server fails the test; elsewhere it is skipped with a message.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

REQUIRE_SERVICES = os.environ.get("ELDEFECT_REQUIRE_SERVICES") == "1"
POSTGRES_URL = os.environ.get(
    "ELDEFECT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("ELDEFECT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _unavailable(what: str, exc: Exception) -> None:
    message = f"{what} is unreachable: {exc}"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message} (ELDEFECT_REQUIRE_SERVICES=1: real-service tests must run)")
    pytest.skip(f"{message}; set ELDEFECT_REQUIRE_SERVICES=1 to make this a failure")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"eldefect_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # any connection failure means "server unavailable"
        admin.dispose()
        _unavailable(f"PostgreSQL at {POSTGRES_URL}", exc)
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    from db.session import get_engine

    get_engine(url).dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database migrated to the head revision, once on SQLite, once on PostgreSQL."""
    from db.migrate import upgrade
    from db.session import get_engine

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/jobs.db"
    else:
        url = request.getfixturevalue("postgres_url")
    upgrade(url)
    yield url
    get_engine(url).dispose()


@pytest.fixture
def redis_url() -> str:
    """The real Redis server, on a database number of its own for this test, flushed first."""
    import redis

    base = REDIS_URL.rsplit("/", 1)[0]
    url = f"{base}/{7 + (uuid.uuid4().int % 8)}"
    try:
        client = redis.Redis.from_url(url)
        client.flushdb()
        client.close()
    except Exception as exc:
        _unavailable(f"Redis at {REDIS_URL}", exc)
    return url


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real EL data folder (ELDEFECT_REAL_DATA); .ci/run always sets it."""
    value = os.environ.get("ELDEFECT_REAL_DATA")
    if not value:
        pytest.skip("ELDEFECT_REAL_DATA is not set: real-data tests need ../shared/data")
    path = Path(value)
    if not path.is_dir():
        pytest.fail(f"ELDEFECT_REAL_DATA={path} is not a folder")
    return path


@pytest.fixture
def settings_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point every setting at a temporary var/ folder (embedded defaults) for one test."""
    from eldefect.settings import get_settings

    var = tmp_path / "var"
    var.mkdir()
    monkeypatch.setenv("ELDEFECT_VAR_DIR", str(var))
    monkeypatch.setenv("ELDEFECT_DATABASE_URL", f"sqlite:///{var}/eldefect.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{var}/mlflow.db")
    get_settings.cache_clear()
    yield var
    get_settings.cache_clear()


@dataclass(frozen=True)
class ModelStore:
    """A session's MLflow registry holding two tiny synthetic models of one name.

    v1 is under alias `production`; v2 (a second training run) is registered without an alias,
    ready for promotion tests. Tests get a copy of the registry database (`production_model`),
    so moving aliases in one test never leaks into another.
    """

    db_file: Path
    name: str
    v1: str
    v2: str
    images: Path  # a synthetic VOC folder the models never trained on


MODEL_NAME = "el_defect_classifier"


def _train_tiny(seed: int) -> str:
    from eldefect.config import load_train_config
    from eldefect.train import train

    config = load_train_config(Path(__file__).parents[1] / "configs/train/synthetic.yaml")
    config.optim.epochs = 6
    config.optim.seed = seed
    config.data.synthetic_n = 240
    return train(config, progress=False).run_id


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelStore]:
    from eldefect.data.synth import write_synthetic_dataset
    from eldefect.registry import promote, register_run
    from eldefect.settings import store_under

    root = tmp_path_factory.mktemp("model_store")
    with store_under(root):
        v1 = register_run(_train_tiny(seed=0), MODEL_NAME)
        promote(name=MODEL_NAME, version=v1, to_production=True)
        v2 = register_run(_train_tiny(seed=1), MODEL_NAME)
        images = write_synthetic_dataset(
            root / "holdout",
            n=24,
            seed=99,
            size=96,
            progress=False,
            classes=["crack", "black_core", "thick_line", "corner", "fragment"],
        )
    yield ModelStore(root / "mlflow.db", MODEL_NAME, v1, v2, images)


@pytest.fixture
def production_model(
    model_store: ModelStore, settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> ModelStore:
    """Embedded settings (see settings_env) whose MLflow registry has the store's models."""
    from eldefect.settings import get_settings

    shutil.copy(model_store.db_file, settings_env / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{settings_env}/mlflow.db")
    get_settings.cache_clear()
    return model_store
