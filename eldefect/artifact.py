"""A registered model's files: its weights as a plain state_dict, beside its card.

Loading a pickled module runs whatever code the pickle names, so anyone able to register a
model version could run code in every worker that serves it. Here the artifact holds only
tensors (`state_dict.pt`, read with `torch.load(weights_only=True)`, which refuses any other
object), and the architecture is rebuilt from the card's training config with our own code.

The module is an MLflow flavor (`save_model(path, mlflow_model=..., **kwargs)`), so
`mlflow.models.Model.log(flavor=eldefect.artifact, ...)` logs and registers it like any
other model: the card travels in the MLmodel metadata.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from eldefect.card import ModelCard
from eldefect.config import ModelConfig
from eldefect.models import build_model

if TYPE_CHECKING:
    from mlflow.models import Model

FLAVOR = "eldefect_state_dict"
WEIGHTS_FILE = "state_dict.pt"
CARD_KEY = "eldefect_card"


class UnsafeModelError(RuntimeError):
    """A model artifact that is not plain weights (or not ours): refused, never executed."""


def save_model(
    path: str | Path,
    *,
    mlflow_model: Model,
    model: torch.nn.Module,
    card: ModelCard,
    signature: Any = None,
    **_: Any,
) -> None:
    """Write `model`'s state_dict and an MLmodel file naming this flavor into `path`."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    torch.save(state, folder / WEIGHTS_FILE)
    mlflow_model.metadata = {**(mlflow_model.metadata or {}), CARD_KEY: card.to_dict()}
    if signature is not None:
        mlflow_model.signature = signature
    mlflow_model.add_flavor(FLAVOR, weights=WEIGHTS_FILE, format="torch_state_dict")
    mlflow_model.save(str(folder / "MLmodel"))


def read_card(mlflow_model: Model, where: str) -> ModelCard:
    metadata = mlflow_model.metadata or {}
    if CARD_KEY not in metadata:
        raise UnsafeModelError(f"{where} has no eldefect model card; was it logged by eldefect?")
    return ModelCard.from_dict(metadata[CARD_KEY])


def load_weights(file: Path) -> dict[str, torch.Tensor]:
    """The tensors in `file`; refuses any pickled object that is not plain weights."""
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsafeModelError(
            f"{file.name} is not plain weights (a weights-only load refused it: {first})"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise UnsafeModelError(f"{file.name} does not hold a state_dict of named tensors")
    return state


def build_from_card(card: ModelCard, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The architecture named by the card's training config, with `state` loaded (strict)."""
    if "model" not in card.config:
        raise UnsafeModelError("the model card has no model config to rebuild the network from")
    model = build_model(ModelConfig.model_validate(card.config["model"]), len(card.labels))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UnsafeModelError(f"the weights do not fit the card's architecture: {exc}") from None
    return model.eval()


def load_local(folder: Path, where: str) -> tuple[torch.nn.Module, ModelCard]:
    """Model and card from a downloaded artifact folder; `where` names it in errors."""
    from mlflow.models import Model

    mlflow_model = Model.load(str(folder / "MLmodel"))
    if FLAVOR not in mlflow_model.flavors:
        kinds = ", ".join(sorted(mlflow_model.flavors)) or "none"
        raise UnsafeModelError(
            f"{where} is not stored as eldefect weights (flavors: {kinds}); eldefect loads "
            "weights only, so log it again with this version (`eldefect train`)"
        )
    card = read_card(mlflow_model, where)
    weights = folder / str(mlflow_model.flavors[FLAVOR].get("weights", WEIGHTS_FILE))
    if not weights.is_file() or weights.parent.resolve() != folder.resolve():
        raise UnsafeModelError(f"{where} has no weights file {weights.name}")
    return build_from_card(card, load_weights(weights)), card
