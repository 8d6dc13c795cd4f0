"""Where a training run reports to. `train()` talks to a `Tracker`; MLflow is the real one.

Keeping MLflow behind this small interface lets the training loop run where MLflow is not
installed (the GPU recipe sweep in bench/ logs to a JSON file instead).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from eldefect.settings import Settings, get_settings

if TYPE_CHECKING:
    import torch

    from eldefect.card import ModelCard


class Tracker(Protocol):
    def run(self, name: str) -> Any: ...  # a context manager yielding the run id
    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_dict(self, data: Any, path: str) -> None: ...
    def log_text(self, text: str, path: str) -> None: ...
    def log_model(
        self, model: torch.nn.Module, card: ModelCard, *, int8_onnx: bytes | None = None
    ) -> str: ...


class MlflowTracker:
    """Logs to the MLflow tracking server or SQLite file named by the settings."""

    def __init__(self, settings: Settings | None = None) -> None:
        import mlflow

        from eldefect.registry import configure_mlflow

        self.mlflow = mlflow
        configure_mlflow(settings or get_settings())

    @contextmanager
    def run(self, name: str) -> Iterator[str]:
        with self.mlflow.start_run(run_name=name, tags={"eldefect_kind": "train"}) as active:
            yield str(active.info.run_id)

    def log_params(self, params: dict[str, Any]) -> None:
        self.mlflow.log_params(params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_dict(self, data: Any, path: str) -> None:
        self.mlflow.log_dict(data, path)

    def log_text(self, text: str, path: str) -> None:
        self.mlflow.log_text(text, path)

    def log_model(
        self, model: torch.nn.Module, card: ModelCard, *, int8_onnx: bytes | None = None
    ) -> str:
        from eldefect.registry import log_model

        return log_model(model, card, int8_onnx=int8_onnx)
