"""MLflow: experiment set-up, logging a model with its card, the registry and its aliases.

A registered model carries its `ModelCard` (eldefect.card) in its MLmodel metadata. Workers
and `predict` read it back from any model URI; promotion compares the cards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import entry_points
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from eldefect.card import ModelCard
from eldefect.settings import Settings, get_settings

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
PROMOTION_HOOKS = "eldefect.promotion_hooks"
STAGING, PRODUCTION = "staging", "production"


def configure_mlflow(settings: Settings | None = None, *, experiment: str | None = None) -> str:
    """Point MLflow at the configured tracking URI; artifacts of a SQLite store go under var/.

    Returns the experiment id.
    """
    settings = settings or get_settings()
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    name = experiment or settings.mlflow_experiment
    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        mlflow.set_experiment(experiment_id=existing.experiment_id)
        return str(existing.experiment_id)
    location = None
    if (
        settings.mlflow_tracking_uri.startswith(("sqlite:", "file:"))
        or "://" not in settings.mlflow_tracking_uri
    ):
        location = (settings.ensure_var_dir() / "mlartifacts").resolve().as_uri()
    experiment_id = mlflow.create_experiment(name, artifact_location=location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return str(experiment_id)


def log_model(model: Any, card: ModelCard) -> str:
    """Log a torch model and its card to the active run; returns the logged model's URI."""
    import numpy as np
    import torch
    import torchvision
    from mlflow.models import infer_signature

    size = card.input_spec.size
    example_in = np.zeros((2, 1, size, size), np.float32)
    example_out = np.zeros((2, len(card.labels)), np.float32)
    info = mlflow.pytorch.log_model(
        model,
        name=MODEL_ARTIFACT,
        # Pickle, not MLflow 3's default torch.export format: an exported program can lock
        # the batch dimension to the example's size and then fail on other batch sizes.
        serialization_format="pickle",
        signature=infer_signature(example_in, example_out),
        # Given explicitly: inferring them runs a child Python for tens of seconds.
        pip_requirements=[
            f"torch=={torch.__version__.split('+')[0]}",
            f"torchvision=={torchvision.__version__.split('+')[0]}",
            f"numpy=={np.__version__}",
        ],
        metadata={"eldefect_card": card.to_dict()},
    )
    return str(info.model_uri)


def _client(tracking_uri: str | None) -> MlflowClient:
    """Point MLflow (its fluent API too) at `tracking_uri` or the settings' URI.

    MLflow keeps the tracking URI as process-global state; setting it on every registry call
    keeps long-lived processes (workers, tests) on the URI their settings name now.
    """
    uri = tracking_uri or get_settings().mlflow_tracking_uri
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


def load_card(model_uri: str, tracking_uri: str | None = None) -> ModelCard:
    _client(tracking_uri)
    metadata = mlflow.models.get_model_info(model_uri).metadata or {}
    if "eldefect_card" not in metadata:
        raise MlflowException(f"{model_uri} has no eldefect model card; was it logged by eldefect?")
    return ModelCard.from_dict(metadata["eldefect_card"])


def load_model(
    model_uri: str, *, device: str = "cpu", tracking_uri: str | None = None
) -> tuple[Any, ModelCard]:
    """The torch module (eval mode) and its card, from runs:/, models:/NAME@alias, etc."""
    _client(tracking_uri)
    model_uri = _pin_alias(model_uri, tracking_uri)
    model = mlflow.pytorch.load_model(model_uri, map_location=device)
    model.eval()
    return model, load_card(model_uri)


def _pin_alias(uri: str, tracking_uri: str | None) -> str:
    """models:/NAME@alias -> models:/NAME/VERSION, so weights and card come from one version
    even when a promotion moves the alias between the two reads."""
    if not uri.startswith("models:/") or "@" not in uri:
        return uri
    name, alias = uri.removeprefix("models:/").split("@", 1)
    version = resolve_alias(name, alias, tracking_uri)
    if version is None:
        raise MlflowException(f"no model version under {uri}")
    return model_uri(name, version)


def model_uri(name: str, version: str) -> str:
    return f"models:/{name}/{version}"


def resolve_alias(name: str, alias: str, tracking_uri: str | None = None) -> str | None:
    """The version under `name@alias`, or None when the model or alias does not exist."""
    client = _client(tracking_uri)
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def latest_training_run(settings: Settings | None = None) -> str:
    settings = settings or get_settings()
    configure_mlflow(settings)
    runs = mlflow.search_runs(
        experiment_names=[settings.mlflow_experiment],
        filter_string="tags.eldefect_kind = 'train' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    if not runs:
        raise MlflowException(
            f"no finished training run in experiment {settings.mlflow_experiment!r}"
        )
    return str(runs[0].info.run_id)


def register_run(run_id: str, name: str, tracking_uri: str | None = None) -> str:
    """Register the model logged by `run_id` as a new version of `name`; returns the version."""
    _client(tracking_uri)
    source = f"runs:/{run_id}/{MODEL_ARTIFACT}"
    version = mlflow.register_model(source, name, tags={"run_id": run_id})
    return str(version.version)


@dataclass(frozen=True)
class PromotionDecision:
    name: str
    version: str
    metric: str
    candidate_value: float
    production_version: str | None
    production_value: float | None
    moved: list[str]

    def describe(self) -> str:
        lines = [
            f"candidate {self.name} v{self.version}: {self.metric} = {self.candidate_value:.4f}"
        ]
        if self.production_version is None:
            lines.append("no model under alias 'production' yet")
        else:
            lines.append(
                f"production {self.name} v{self.production_version}: "
                f"{self.metric} = {self.production_value:.4f}"
            )
        lines.append(
            "aliases moved: " + ", ".join(f"{a} -> v{self.version}" for a in self.moved)
            if self.moved
            else "aliases unchanged: the candidate does not beat production"
        )
        return "\n".join(lines)


def promote(
    *, name: str, version: str, to_production: bool = False, tracking_uri: str | None = None
) -> PromotionDecision:
    """Set `staging` when the candidate beats `production` on the selection metric (or none
    exists); with `to_production`, move `production` to it as well (an explicit decision)."""
    _client(tracking_uri)
    candidate = load_card(model_uri(name, version))
    prod_version = resolve_alias(name, PRODUCTION, tracking_uri)
    prod_value: float | None = None
    beats = True
    if prod_version is not None and prod_version != version:
        prod_card = load_card(model_uri(name, prod_version))
        prod_value = prod_card.selection_value
        if prod_card.selection_metric != candidate.selection_metric:
            log.warning(
                "production was selected by %s, the candidate by %s: values not comparable",
                prod_card.selection_metric,
                candidate.selection_metric,
            )
        beats = candidate.selection_value > prod_value
    moved = [STAGING] * beats + [PRODUCTION] * to_production
    for alias in moved:
        move_alias(name, alias, version, tracking_uri)
    return PromotionDecision(
        name,
        version,
        candidate.selection_metric,
        candidate.selection_value,
        prod_version,
        prod_value,
        moved,
    )


def move_alias(name: str, alias: str, version: str, tracking_uri: str | None = None) -> None:
    """Point `name@alias` at `version` and tell the promotion hooks (workers swap at once)."""
    _client(tracking_uri).set_registered_model_alias(name, alias, version)
    _run_promotion_hooks(name, alias, version)


def tag_version(
    name: str, version: str, tags: dict[str, str], tracking_uri: str | None = None
) -> None:
    """Set tags on a registered version (the gate's numbers and decision, for example)."""
    client = _client(tracking_uri)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def version_created_at(name: str, version: str, tracking_uri: str | None = None) -> datetime:
    """When a version was registered (UTC)."""
    created_ms = _client(tracking_uri).get_model_version(name, version).creation_timestamp
    return datetime.fromtimestamp(created_ms / 1000, tz=UTC)


def _run_promotion_hooks(name: str, alias: str, version: str) -> None:
    """Tell interested parties (workers register a hook) that an alias moved."""
    for ep in entry_points(group=PROMOTION_HOOKS):
        try:
            ep.load()(name, alias, version)
        except Exception:  # a hook failing must not undo or hide the promotion itself
            log.exception(
                "promotion hook %s failed; workers will notice on their next check", ep.name
            )
