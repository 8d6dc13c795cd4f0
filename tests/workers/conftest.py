"""Fixtures for worker tests (the database comes from tests/conftest.py: `db_url`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class TinyRegistry:
    """A tracking store holding a tiny trained model registered twice (versions 1 and 2)."""

    mlflow_db: Path
    name: str
    versions: tuple[str, ...]


@pytest.fixture(scope="session")
def tiny_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyRegistry]:
    """Train a tiny model once per session on synthetic cells; register it as v1 and v2.

    Both versions hold the same weights: the tests care which version served a job, and a
    second training would only cost time. The alias is set by each test (`served_model`).
    """
    from eldefect.config import (
        AugmentConfig,
        DataConfig,
        InputConfig,
        ModelConfig,
        OptimConfig,
        TrainConfig,
    )
    from eldefect.settings import get_settings

    root = tmp_path_factory.mktemp("tiny_registry")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ELDEFECT_VAR_DIR", str(root))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        get_settings.cache_clear()
        settings = get_settings()
        import mlflow
        from mlflow import MlflowClient

        from eldefect.registry import configure_mlflow
        from eldefect.train import train

        config = TrainConfig(
            name="tiny",
            data=DataConfig(format="synthetic", synthetic_n=40, synthetic_size=64),
            input=InputConfig(size=64),
            model=ModelConfig(width=4, depth=1),
            augment=AugmentConfig(enabled=False),
            optim=OptimConfig(epochs=1, batch_size=16, threads=1),
        )
        outcome = train(config, settings=settings, progress=False, workdir=root)
        configure_mlflow(settings)
        client = MlflowClient()
        run = client.get_run(outcome.run_id)
        logged = client.search_logged_models(
            experiment_ids=[run.info.experiment_id],
            filter_string=f"source_run_id = '{outcome.run_id}'",
        )
        source = logged[0].model_uri
        versions = tuple(
            str(mlflow.register_model(source, settings.model_name).version) for _ in range(2)
        )
        name = settings.model_name
    get_settings.cache_clear()
    yield TinyRegistry(mlflow_db=root / "mlflow.db", name=name, versions=versions)


@pytest.fixture
def served_model(tiny_registry: TinyRegistry, settings_env: Path) -> TinyRegistry:
    """This test's own copy of the tiny registry, with `production` on version 1."""
    import shutil

    from mlflow import MlflowClient

    shutil.copy(tiny_registry.mlflow_db, settings_env / "mlflow.db")
    client = MlflowClient(tracking_uri=f"sqlite:///{settings_env}/mlflow.db")
    client.set_registered_model_alias(tiny_registry.name, "production", tiny_registry.versions[0])
    return tiny_registry
