"""ONNX copies of a trained model for CPU serving: the float graph, and an int8 one.

The int8 copy is made at training time, where the data is: static quantization with ONNX
Runtime (QDQ format, int8 weights per output channel, uint8 activations whose ranges are
calibrated on training images), then checked on the validation split against the float
model, class by class. Workers serve it only when its card says the check passed
(`Int8Check.accepted`); on CPUs with VNNI it runs the forward pass three to four times faster
(docs/performance.md).
"""

from __future__ import annotations

import copy
import logging
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from eldefect.metrics import macro, per_class_metrics

if TYPE_CHECKING:
    import onnxruntime as ort

log = logging.getLogger(__name__)

INPUT, OUTPUT = "input", "logits"


def export_onnx(model: torch.nn.Module, size: int) -> bytes:
    """The float graph of `model` for (N, 1, size, size) inputs, any batch size."""
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):  # per-pass INFO lines
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # A copy: the export must not change the memory format of a model torch still serves.
    exportable = copy.deepcopy(model).to("cpu").to(memory_format=torch.contiguous_format)
    program = torch.onnx.export(
        exportable.eval(),
        (torch.zeros(2, 1, size, size),),
        dynamo=True,
        input_names=[INPUT],
        output_names=[OUTPUT],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
        verbose=False,
    )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    return bytes(program.model_proto.SerializeToString())


def session(graph: bytes, threads: int | None = None) -> ort.InferenceSession:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3  # the quantized graph's QDQ notices are not for operators
    # Idle threads sleep instead of spinning: a worker shares its cores with the gateway, the
    # database and the next batch's decoding, and spinning took their time (measured on this
    # 2-core machine under load: int8 ResNet-18 at batch 16, 66 images/s against 50).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def probabilities(runner: ort.InferenceSession, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """(N, 1, S, S) normalised inputs -> (N, C) sigmoid probabilities."""
    logits = [runner.run(None, {INPUT: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    return 1.0 / (1.0 + np.exp(-np.concatenate(logits)))


def quantize_int8(graph: bytes, calibration: np.ndarray, batch: int = 16) -> bytes:
    """Static int8 quantization of a float graph; activation ranges from `calibration`
    ((N, 1, S, S) normalised training inputs, as the model sees them)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches: Iterator[dict[str, np.ndarray]] = (
                {INPUT: calibration[i : i + batch]} for i in range(0, len(calibration), batch)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    with tempfile.TemporaryDirectory(prefix="eldefect-int8-") as tmp:
        folder = Path(tmp)
        (folder / "float.onnx").write_bytes(graph)
        # Shape inference and graph fusions (BatchNorm into Conv) before quantizing.
        quant_pre_process(str(folder / "float.onnx"), str(folder / "prepared.onnx"))
        quantize_static(
            str(folder / "prepared.onnx"),
            str(folder / "int8.onnx"),
            Batches(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        return (folder / "int8.onnx").read_bytes()


@dataclass(frozen=True)
class Int8Check:
    """The int8 copy against the float model on the same validation images."""

    accepted: bool
    reason: str
    n_images: int
    macro_ap_float: float
    macro_ap_int8: float
    ap_drop: dict[str, float]  # per class, float AP minus int8 AP
    max_probability_diff: float
    decision_agreement: float  # share of (image, class) decisions at the card's thresholds

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_int8(
    float_probs: np.ndarray,
    int8_probs: np.ndarray,
    targets: np.ndarray,
    labels: Sequence[str],
    thresholds: Mapping[str, float],
    *,
    max_ap_drop: float,
    min_agreement: float,
) -> Int8Check:
    """Accept the int8 copy when macro AP loses at most `max_ap_drop` and at least
    `min_agreement` of the (image, class) decisions at the card's thresholds stay the same.

    Per-class AP is recorded but not judged alone: on a class with a dozen validation
    positives one swapped pair moves AP by more than quantization error does."""
    names = list(labels)
    ref = per_class_metrics(float_probs, targets, names, dict(thresholds))
    got = per_class_metrics(int8_probs, targets, names, dict(thresholds))
    drops = {n: round(ref[n].ap - got[n].ap, 6) for n in names if np.isfinite(ref[n].ap)}
    cut = np.array([thresholds[n] for n in names], np.float32)
    agreement = float(((float_probs >= cut) == (int8_probs >= cut)).mean())
    macro_float, macro_int8 = macro(ref, "ap"), macro(got, "ap")
    if macro_float - macro_int8 > max_ap_drop:
        accepted, reason = False, f"macro AP drops {macro_float - macro_int8:.4f} > {max_ap_drop}"
    elif agreement < min_agreement:
        accepted, reason = False, f"{agreement:.2%} of decisions agree < {min_agreement:.2%}"
    else:
        accepted, reason = True, f"macro AP within {max_ap_drop}, {agreement:.2%} decisions agree"
    return Int8Check(
        accepted=accepted,
        reason=reason,
        n_images=len(targets),
        macro_ap_float=round(macro_float, 6),
        macro_ap_int8=round(macro_int8, 6),
        ap_drop=drops,
        max_probability_diff=round(float(np.abs(float_probs - int8_probs).max()), 6),
        decision_agreement=round(agreement, 6),
    )


def int8_copy(
    model: torch.nn.Module,
    calibration: np.ndarray,
    validation: np.ndarray,
    float_probs: np.ndarray,
    targets: np.ndarray,
    labels: Sequence[str],
    thresholds: Mapping[str, float],
    *,
    max_ap_drop: float,
    min_agreement: float,
) -> tuple[bytes, Int8Check]:
    """Quantize `model` on `calibration` inputs and check it on the `validation` inputs
    whose float probabilities and targets are given."""
    graph = quantize_int8(export_onnx(model, calibration.shape[-1]), calibration)
    check = check_int8(
        float_probs,
        probabilities(session(graph), validation),
        targets,
        labels,
        thresholds,
        max_ap_drop=max_ap_drop,
        min_agreement=min_agreement,
    )
    log.info(
        "int8 copy: macro AP %.4f (float %.4f), decisions agree %.2f%%, %s: %s",
        check.macro_ap_int8,
        check.macro_ap_float,
        100 * check.decision_agreement,
        "accepted" if check.accepted else "refused",
        check.reason,
    )
    return graph, check
