"""A registered model's files: its weights as a plain state_dict, beside its card, and an
optional int8 ONNX copy for CPU serving (eldefect.quantize).

Loading a pickled module runs whatever code the pickle names, so anyone able to register a
model version could run code in every worker that serves it. Here the artifact holds only
tensors (`state_dict.pt`, read with `torch.load(weights_only=True)`, which refuses any other
object), and the architecture is rebuilt from the card's training config with our own code.

The module is an MLflow flavor (`save_model(path, mlflow_model=..., **kwargs)`), so
`mlflow.models.Model.log(flavor=eldefect.artifact, ...)` logs and registers it like any
other model: the card travels in the MLmodel metadata.

The ONNX copy is a graph of standard operators that ONNX Runtime interprets; it runs no
Python. Its tensors must be inside the file: a graph naming external data files would read
whatever paths it names, so such a copy is refused.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
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
INT8_FILE = "model.int8.onnx"
CARD_KEY = "eldefect_card"


class UnsafeModelError(RuntimeError):
    """A model artifact that is not plain weights (or not ours): refused, never executed."""


def save_model(
    path: str | Path,
    *,
    mlflow_model: Model,
    model: torch.nn.Module,
    card: ModelCard,
    int8_onnx: bytes | None = None,
    signature: Any = None,
    **_: Any,
) -> None:
    """Write `model`'s state_dict, the int8 copy if given, and an MLmodel file naming this
    flavor into `path`."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    torch.save(state, folder / WEIGHTS_FILE)
    mlflow_model.metadata = {**(mlflow_model.metadata or {}), CARD_KEY: card.to_dict()}
    if signature is not None:
        mlflow_model.signature = signature
    files = {"weights": WEIGHTS_FILE}
    if int8_onnx is not None:
        (folder / INT8_FILE).write_bytes(int8_onnx)
        files["int8_onnx"] = INT8_FILE
    mlflow_model.add_flavor(FLAVOR, format="torch_state_dict", **files)
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


@dataclass(frozen=True)
class LoadedModel:
    model: torch.nn.Module
    card: ModelCard
    int8_onnx: bytes | None  # the int8 serving copy, when the artifact has one


def _file_in(folder: Path, name: str, where: str) -> Path:
    file = folder / name
    if not file.is_file() or file.parent.resolve() != folder.resolve():
        raise UnsafeModelError(f"{where} has no file {file.name}")
    return file


def read_onnx(file: Path) -> bytes:
    """The graph in `file`; refused when it names external data files."""
    import onnx

    graph = file.read_bytes()
    proto = onnx.load_model_from_string(graph)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        raise UnsafeModelError(f"{file.name} refers to external data files")
    return graph


def load_local(folder: Path, where: str) -> LoadedModel:
    """Model, card and int8 copy from a downloaded artifact folder; `where` names it in
    errors."""
    from mlflow.models import Model

    mlflow_model = Model.load(str(folder / "MLmodel"))
    if FLAVOR not in mlflow_model.flavors:
        kinds = ", ".join(sorted(mlflow_model.flavors)) or "none"
        raise UnsafeModelError(
            f"{where} is not stored as eldefect weights (flavors: {kinds}); eldefect loads "
            "weights only, so log it again with this version (`eldefect train`)"
        )
    card = read_card(mlflow_model, where)
    files = mlflow_model.flavors[FLAVOR]
    weights = _file_in(folder, str(files.get("weights", WEIGHTS_FILE)), where)
    model = build_from_card(card, load_weights(weights))
    int8 = files.get("int8_onnx")
    int8_onnx = read_onnx(_file_in(folder, str(int8), where)) if int8 else None
    return LoadedModel(model, card, int8_onnx)
