"""MLflow: experiment set-up, logging a model with its card, the registry and its aliases.

A registered model carries its `ModelCard` (eldefect.card) in its MLmodel metadata. Workers
and `predict` read it back from any model URI; promotion compares the cards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from eldefect.card import ModelCard

if TYPE_CHECKING:
    from eldefect.artifact import LoadedModel
from eldefect.settings import Settings, get_settings

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
PROMOTION_HOOKS = "eldefect.promotion_hooks"
STAGING = "staging"


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


def log_model(model: Any, card: ModelCard, *, int8_onnx: bytes | None = None) -> str:
    """Log a torch model's weights, its card and its int8 serving copy (if any) to the active
    run; returns the model's URI.

    Weights only (eldefect.artifact): a pickled module would run code wherever it is loaded.
    """
    import numpy as np
    import torch
    import torchvision
    from mlflow.models import Model, infer_signature

    from eldefect import artifact

    size = card.input_spec.size
    example_in = np.zeros((2, 1, size, size), np.float32)
    example_out = np.zeros((2, len(card.labels)), np.float32)
    info = Model.log(
        artifact_path=None,  # deprecated in favour of `name`, but still a required parameter
        name=MODEL_ARTIFACT,
        flavor=artifact,
        flavor_name=artifact.FLAVOR,
        model=model,
        card=card,
        int8_onnx=int8_onnx,
        signature=infer_signature(example_in, example_out),
        # Recorded for people reading the run; nothing installs from them.
        tags={
            "torch": torch.__version__.split("+")[0],
            "torchvision": torchvision.__version__.split("+")[0],
        },
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
    from eldefect.artifact import CARD_KEY

    metadata = mlflow.models.get_model_info(model_uri).metadata or {}
    if CARD_KEY not in metadata:
        raise MlflowException(f"{model_uri} has no eldefect model card; was it logged by eldefect?")
    return ModelCard.from_dict(metadata[CARD_KEY])


def load_model(
    model_uri: str, *, device: str = "cpu", tracking_uri: str | None = None
) -> tuple[Any, ModelCard]:
    """The torch module (eval mode) and its card, from runs:/, models:/NAME@alias, etc."""
    loaded = load_artifact(model_uri, tracking_uri=tracking_uri)
    return loaded.model.to(device).eval(), loaded.card


def load_artifact(model_uri: str, *, tracking_uri: str | None = None) -> LoadedModel:
    """Everything a model version holds: torch module (CPU, eval mode), card, int8 copy.

    Weights only: the artifact's tensors go into the architecture the card names
    (eldefect.artifact); anything else in it is refused with UnsafeModelError, never run.
    """
    import tempfile
    from pathlib import Path

    from eldefect.artifact import load_local

    _client(tracking_uri)
    model_uri = _pin_alias(model_uri, tracking_uri)
    with tempfile.TemporaryDirectory(prefix="eldefect-model-") as tmp:
        folder = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
        return load_local(Path(folder), model_uri)


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
    served_alias: str  # the alias workers serve (settings.model_alias)
    served_version: str | None
    served_value: float | None
    moved: list[str]

    def describe(self) -> str:
        lines = [
            f"candidate {self.name} v{self.version}: {self.metric} = {self.candidate_value:.4f}"
        ]
        if self.served_version is None:
            lines.append(f"no model under alias {self.served_alias!r} yet")
        else:
            lines.append(
                f"{self.served_alias} {self.name} v{self.served_version}: "
                f"{self.metric} = {self.served_value:.4f}"
            )
        lines.append(
            "aliases moved: " + ", ".join(f"{a} -> v{self.version}" for a in self.moved)
            if self.moved
            else f"aliases unchanged: the candidate does not beat {self.served_alias}"
        )
        return "\n".join(lines)


def promote(
    *,
    name: str,
    version: str,
    to_production: bool = False,
    served_alias: str | None = None,
    tracking_uri: str | None = None,
) -> PromotionDecision:
    """Set `staging` when the candidate beats the served alias on the selection metric (or
    none exists); with `to_production`, move the served alias to it as well (an explicit
    decision). The served alias is `settings.model_alias` (`production` by default)."""
    served_alias = served_alias or get_settings().model_alias
    _client(tracking_uri)
    candidate = load_card(model_uri(name, version))
    served_version = resolve_alias(name, served_alias, tracking_uri)
    served_value: float | None = None
    beats = True
    if served_version is not None and served_version != version:
        served_card = load_card(model_uri(name, served_version))
        served_value = served_card.selection_value
        if served_card.selection_metric != candidate.selection_metric:
            log.warning(
                "%s was selected by %s, the candidate by %s: values not comparable",
                served_alias,
                served_card.selection_metric,
                candidate.selection_metric,
            )
        beats = candidate.selection_value > served_value
    moved = [STAGING] * beats + [served_alias] * to_production
    for alias in moved:
        move_alias(name, alias, version, tracking_uri)
    return PromotionDecision(
        name,
        version,
        candidate.selection_metric,
        candidate.selection_value,
        served_alias,
        served_version,
        served_value,
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
