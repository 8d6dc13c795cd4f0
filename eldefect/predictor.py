"""Serving a registered model: decoded images in, per-class probabilities out.

Backends for the same weights: `torch` (eager, channels_last on CPU), `onnx` (ONNX Runtime on
the float graph, exported at load) and `int8` (ONNX Runtime on the int8 copy made and checked
at training time, eldefect.quantize). `auto` on CPU takes the int8 copy when its card says it
passed its validation check, else the float graph when it reproduces the torch probabilities
within `ONNX_TOLERANCE` on a check batch, else torch; on CUDA always torch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch

from eldefect.card import ModelCard
from eldefect.preprocess import preprocess_batch
from eldefect.quantize import INPUT, OUTPUT, export_onnx, session
from eldefect.registry import load_artifact

log = logging.getLogger(__name__)

Backend = Literal["auto", "int8", "onnx", "torch"]
ONNX_TOLERANCE = 1e-4


class _Runner(Protocol):
    name: str

    def __call__(self, x: torch.Tensor) -> np.ndarray: ...  # (N,1,S,S) -> (N,C) probabilities


class TorchRunner:
    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.device = device
        # channels_last is about 3x faster for a 1-channel CNN on CPU here.
        self.model = model.to(device).to(memory_format=torch.channels_last).eval()
        self.name = f"torch-{device.type}"

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> np.ndarray:
        x = x.to(self.device, memory_format=torch.channels_last)
        return torch.sigmoid(self.model(x)).float().cpu().numpy()


class OnnxRunner:
    """ONNX Runtime on CPU over a serialized graph (eldefect.quantize's input and output)."""

    def __init__(self, graph: bytes, name: str = "onnxruntime-cpu") -> None:
        self.session = session(graph)
        self.name = name

    @classmethod
    def export(cls, model: torch.nn.Module, size: int) -> OnnxRunner:
        return cls(export_onnx(model, size))

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        logits = self.session.run([OUTPUT], {INPUT: x.numpy()})[0]
        return 1.0 / (1.0 + np.exp(-logits))


def _onnx_runner(model: torch.nn.Module, size: int, reference: TorchRunner) -> OnnxRunner | None:
    """An ONNX runner that matches `reference`, or None (logged) when export or check fails."""
    try:
        runner = OnnxRunner.export(model, size)
    except Exception as exc:  # export support varies by model; torch still serves
        log.warning("ONNX export failed (%s); serving with torch", exc)
        return None
    check = torch.rand(3, 1, size, size, generator=torch.Generator().manual_seed(0)) * 4 - 2
    diff = float(np.abs(runner(check) - reference(check)).max())
    if diff > ONNX_TOLERANCE:
        log.warning(
            "ONNX output differs from torch by %.2e > %.0e; serving with torch",
            diff,
            ONNX_TOLERANCE,
        )
        return None
    log.info("ONNX Runtime matches torch within %.1e", diff)
    return runner


class BackendUnavailable(RuntimeError):
    """The runtime asked for (`int8`, `onnx`) cannot serve this model; the reason says why."""


def _int8_runner(
    graph: bytes | None, card: ModelCard, model_uri: str, backend: Backend
) -> OnnxRunner | None:
    """The int8 copy's runner when `backend` asks for it (or `auto` and it passed its check)."""
    if backend not in ("auto", "int8"):
        return None
    check = card.serving.get("int8")
    if graph is None or check is None:
        if backend == "int8":
            raise BackendUnavailable(f"backend 'int8' asked for, but {model_uri} has no int8 copy")
        return None
    if not card.int8_accepted:
        if backend == "int8":
            raise BackendUnavailable(
                f"{model_uri}'s int8 copy failed its check: {check.get('reason')}"
            )
        log.info("not serving the int8 copy: %s", check.get("reason"))
        return None
    return OnnxRunner(graph, name="onnxruntime-int8")


@dataclass(frozen=True)
class PredictionResult:
    """One image's answer: the job result body (CONTRACT.md)."""

    probabilities: dict[str, float]  # label -> probability, rounded to 6 digits
    defects: list[str]  # labels at or over their threshold, in label order
    thresholds: dict[str, float]


class Predictor:
    """One loaded model with its card, ready to serve batches."""

    def __init__(self, runner: _Runner, card: ModelCard, *, name: str, version: str) -> None:
        self.runner, self.card, self.name, self.version = runner, card, name, version
        self.labels = list(card.labels)
        self.thresholds = {label: float(card.thresholds.get(label, 0.5)) for label in self.labels}
        self.spec = card.input_spec
        self.input_size = self.spec.size  # decoders may stop at this size (decode_gray)

    @property
    def backend(self) -> str:
        return self.runner.name

    def predict(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Grayscale (H, W) 0..1 images of any size -> (N, C) probabilities, one forward pass."""
        if not images:
            return np.zeros((0, len(self.labels)), np.float32)
        return self.runner(preprocess_batch(images, self.spec))

    def result(self, probs: np.ndarray) -> PredictionResult:
        """One image's probabilities as the job result (probabilities, defects, thresholds)."""
        probabilities = {
            label: round(float(p), 6) for label, p in zip(self.labels, probs, strict=True)
        }
        return PredictionResult(
            probabilities=probabilities,
            defects=[
                label for label in self.labels if probabilities[label] >= self.thresholds[label]
            ],
            thresholds=dict(self.thresholds),
        )


def load_predictor(
    model_uri: str,
    *,
    device: str = "cpu",
    backend: Backend = "auto",
    name: str = "",
    version: str = "",
) -> Predictor:
    """Load `model_uri` (models:/NAME/VERSION, models:/NAME@alias, runs:/...) for serving."""
    started = time.perf_counter()
    dev = torch.device(device)
    loaded = load_artifact(model_uri)
    card = loaded.card
    torch_runner = TorchRunner(loaded.model, dev)
    runner: _Runner = torch_runner
    if dev.type == "cpu" and backend != "torch":
        # The int8 copy first (None unless asked for or accepted), then the float graph.
        onnx = _int8_runner(loaded.int8_onnx, card, model_uri, backend) or _onnx_runner(
            loaded.model, card.input_spec.size, torch_runner
        )
        if onnx is not None:
            runner = onnx
        elif backend == "onnx":
            raise BackendUnavailable(
                f"backend 'onnx' asked for, but {model_uri} cannot be served by ONNX Runtime"
            )
    log.info(
        "loaded %s (%s v%s) on %s with %s in %.1fs",
        model_uri,
        name or "?",
        version or "?",
        device,
        runner.name,
        time.perf_counter() - started,
    )
    return Predictor(runner, card, name=name or model_uri, version=version or "")
