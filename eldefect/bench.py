"""`eldefect bench`: how fast one model serves, from the forward pass alone to a station's view.

The ML core measures what needs no server: the forward pass at batch sizes 1..64 in each
runtime a worker can serve with (the *limit*), and the worker's in-process pipeline (decode,
statistics, preprocess, forward). The serving sections (end to end through gateway, broker,
worker and database; the peers; memory; scaling) plug in by entry point (`BENCH_SECTIONS`),
so this module never imports serving code. Every figure is a median over repeats; machines
here are shared and noisy, so compare the ratios within one run, not absolute values.
"""

from __future__ import annotations

import io
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from eldefect.card import ModelCard
from eldefect.config import ModelConfig
from eldefect.imaging import decode_gray
from eldefect.models import build_model
from eldefect.predictor import OnnxRunner, Predictor, TorchRunner
from eldefect.preprocess import preprocess_batch
from eldefect.quantize import export_onnx, quantize_int8
from eldefect.stats import input_statistics

if TYPE_CHECKING:
    from eldefect.artifact import LoadedModel

BENCH_SECTIONS = "eldefect.bench_sections"
IMAGE_KINDS = ("cell", "strip", "module")  # 300 px PNG, 600 px JPEG, 2000x1000 JPEG
_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
Runner = Callable[[torch.Tensor], np.ndarray]


@dataclass(frozen=True)
class BenchPlan:
    """How much one run measures; `quick()` is a smoke test, not a measurement."""

    repeats: int = 5
    limit_batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    pipeline_images: int = 64
    stations: tuple[int, ...] = (1, 4, 16, 64)
    jobs_per_point: int = 400  # each end-to-end point stops at this many jobs ...
    seconds_per_point: float = 20.0  # ... or after this long, whichever comes first
    scaling_stations: int = 16
    distinct_images: int = 16

    @classmethod
    def quick(cls) -> BenchPlan:
        return cls(
            repeats=2,
            limit_batches=(1, 4),
            pipeline_images=4,
            stations=(1, 4),
            jobs_per_point=8,
            seconds_per_point=10.0,
            scaling_stations=2,
            distinct_images=2,
        )


@dataclass
class BenchContext:
    """What every section gets: the plan, the registered model and the images."""

    plan: BenchPlan
    model_name: str
    model_uri: str  # models:/NAME@ALIAS
    tracking_uri: str
    images: dict[str, list[bytes]]  # kind -> encoded files (IMAGE_KINDS)
    workdir: Path
    echo: Callable[[str], None]
    options: dict[str, Any] = field(default_factory=dict)  # e.g. the Postgres and Redis URLs
    results: dict[str, Any] = field(default_factory=dict)  # the sections measured so far


def median_rate(run: Callable[[], object], items: int, repeats: int) -> float:
    """Median items/s of `run` over `repeats` timed calls, after one warm-up call."""
    run()  # allocators, ONNX Runtime's first-run planning, lazy imports
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        rates.append(items / (time.perf_counter() - start))
    return statistics.median(rates)


def serving_runtimes(loaded: LoadedModel) -> dict[str, Runner]:
    """The runtimes a CPU worker can serve with (eldefect.predictor), by name."""
    # Exports a contiguous copy; TorchRunner converts the model in place.
    onnx = OnnxRunner.export(loaded.model, loaded.card.input_spec.size)
    torch_runner = TorchRunner(loaded.model, torch.device("cpu"))
    runtimes: dict[str, Runner] = {torch_runner.name: torch_runner, onnx.name: onnx}
    if loaded.int8_onnx is not None:
        runtimes["onnxruntime-int8"] = OnnxRunner(loaded.int8_onnx, name="onnxruntime-int8")
    return runtimes


def limit_rows(
    runtimes: dict[str, Runner], *, size: int, batches: Sequence[int], repeats: int
) -> list[dict[str, Any]]:
    """The forward pass alone: images/s per runtime and batch size (random input)."""
    rows = []
    gen = torch.Generator().manual_seed(0)
    for batch in batches:
        x = torch.randn(batch, 1, size, size, generator=gen)  # (B, 1, S, S)
        reference: np.ndarray | None = None
        for name, runner in runtimes.items():
            rate = median_rate(partial(runner, x), batch, repeats)
            probs = runner(x)
            reference = probs if reference is None else reference
            rows.append(
                {
                    "runtime": name,
                    "batch": batch,
                    "images_per_s": rate,
                    "max_abs_diff": float(np.abs(probs - reference).max()),
                }
            )
    return rows


def pipeline_rows(
    predictor: Predictor, images: Sequence[bytes], *, batch: int, repeats: int, max_pixels: int
) -> dict[str, Any]:
    """The worker's work in one process: decode + statistics + preprocess + forward at its
    batch size; decode + preprocess alone; one image through all of it (ms)."""
    files = [images[i % len(images)] for i in range(batch)]

    def decode(data: bytes) -> np.ndarray:  # as workers/inference.py decodes
        return decode_gray(data, max_pixels=max_pixels, min_side=predictor.input_size)

    def decode_preprocess() -> torch.Tensor:
        return preprocess_batch([decode(f) for f in files], predictor.spec)

    def whole(batch_files: Sequence[bytes]) -> np.ndarray:
        grays = [decode(f) for f in batch_files]
        for gray in grays:
            input_statistics(gray)
        return predictor.predict(grays)

    single = median_rate(lambda: whole(files[:1]), 1, repeats)
    return {
        "runtime": predictor.backend,
        "batch": batch,
        "pipeline_images_per_s": median_rate(lambda: whole(files), batch, repeats),
        "decode_preprocess_images_per_s": median_rate(decode_preprocess, batch, repeats),
        "single_image_ms": 1000.0 / single,
    }


# --- images -------------------------------------------------------------------------------


def _encode(pixels: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    image = Image.fromarray(pixels)
    if fmt == "JPEG":  # as PV-Multi-Defect stores its strips: 3 equal channels
        image = image.convert("RGB")
        image.save(buf, fmt, quality=90)
    else:
        image.save(buf, fmt)
    return buf.getvalue()


def synthetic_images(kind: str, n: int, seed: int = 0) -> list[bytes]:
    """`n` synthetic EL images of one kind: a 300 px PNG cell, a 600 px JPEG strip of 2x2
    cells, or a 2000x1000 JPEG module of 10x5 cells."""
    from eldefect.data.synth import render_cell

    rng = np.random.default_rng(seed)
    grid, cell, fmt = {"cell": ((1, 1), 300, "PNG"), "strip": ((2, 2), 300, "JPEG")}.get(
        kind, ((10, 5), 200, "JPEG")
    )
    out = []
    for _ in range(n):
        cells = [[render_cell(rng, cell, [])[0] for _ in range(grid[0])] for _ in range(grid[1])]
        out.append(_encode(np.block(cells), fmt))
    return out


def folder_images(folder: Path, n: int) -> list[bytes]:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in _SUFFIXES)[:n]
    if not paths:
        raise ValueError(f"no images ({', '.join(sorted(_SUFFIXES))}) under {folder}")
    return [p.read_bytes() for p in paths]


# --- a model to serve ----------------------------------------------------------------------


def untrained_model(arch: str, num_classes: int) -> torch.nn.Module:
    """Speed does not depend on the weights: an untrained model of the same shape will do."""
    return build_model(ModelConfig(arch=arch), num_classes).eval()


def register_untrained(
    *, arch: str, size: int, labels: Sequence[str], name: str, alias: str
) -> str:
    """Register an untrained model under `name@alias` in the configured MLflow; returns its
    version. The end-to-end sections need a registered model, the peers the same one.

    Like a trained one, it carries an int8 copy, calibrated on synthetic strips; with no
    labelled data to check it on, its card says so, and it is served for speed only."""
    import mlflow

    from eldefect.registry import configure_mlflow, log_model, register_run
    from eldefect.settings import get_settings

    configure_mlflow(experiment="eldefect-bench")
    spec = {"size": size, "mean": 0.5, "std": 0.25}
    card = ModelCard(
        labels=list(labels),
        input=spec,
        thresholds=dict.fromkeys(labels, 0.5),
        selection_metric="none (untrained, for speed only)",
        selection_value=0.0,
        config={"model": {"arch": arch}},
        serving={"int8": {"accepted": True, "reason": "untrained bench model, not checked"}},
    )
    model = untrained_model(arch, len(labels))
    calibration = preprocess_batch(
        [
            decode_gray(data, max_pixels=get_settings().max_image_pixels, min_side=size)
            for data in synthetic_images("strip", 16, seed=99)
        ],
        card.input_spec,
    ).numpy()
    int8 = quantize_int8(export_onnx(model, size), calibration)
    with mlflow.start_run(run_name="bench-untrained") as run:
        log_model(model, card, int8_onnx=int8)
    version = register_run(run.info.run_id, name)
    # Not registry.move_alias: its promotion hooks would tell running workers elsewhere.
    mlflow.MlflowClient().set_registered_model_alias(name, alias, version)
    return version


# --- the run -------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average": list(os.getloadavg()),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def started_at() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def serving_sections() -> dict[str, Callable[[BenchContext], dict[str, Any]]]:
    """The sections other packages plug in (the serving side registers `serving`)."""
    return {ep.name: ep.load() for ep in entry_points(group=BENCH_SECTIONS)}


def _model_name(model_uri: str) -> str:
    if not model_uri.startswith("models:/") or "@" not in model_uri:
        raise ValueError(
            f"--model-uri must be models:/NAME@ALIAS (served by alias), not {model_uri}"
        )
    return model_uri.removeprefix("models:/").split("@", 1)[0]


def run_bench(
    *,
    model_uri: str | None,
    arch: str,
    size: int,
    image_dir: Path | None,
    sections: Sequence[str],
    quick: bool,
    options: dict[str, Any],
    workdir: Path | None,
    command: str,
    echo: Callable[[str], None],
) -> dict[str, Any]:
    """Run the asked sections; returns every figure (JSON-able but for `workdir`)."""
    from eldefect.labels import load_label_set
    from eldefect.settings import get_settings, store_under

    plan = BenchPlan.quick() if quick else BenchPlan()
    settings = get_settings()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = (workdir or settings.var_dir / "bench" / stamp).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "started_at": started_at(),
        "commit": git_commit(),
        "command": command,
        "machine": machine(),
        "plan": {k: getattr(plan, k) for k in plan.__dataclass_fields__},
        "workdir": workdir,
    }
    if model_uri is not None:
        _measure(report, model_uri, image_dir, sections, plan, options, echo)
    else:  # a fresh registry of our own: nothing else's models are touched
        with store_under(workdir) as settings:
            labels = load_label_set("pv_multi_defect").labels
            name, alias = settings.model_name, settings.model_alias
            register_untrained(arch=arch, size=size, labels=labels, name=name, alias=alias)
            model_uri = f"models:/{name}@{alias}"
            echo(f"registered an untrained {arch} ({size} px, {len(labels)} labels) as {model_uri}")
            _measure(report, model_uri, image_dir, sections, plan, options, echo)
    report["finished_at"] = started_at()
    report["machine"]["load_average_after"] = list(os.getloadavg())
    return report


def _measure(
    report: dict[str, Any],
    model_uri: str,
    image_dir: Path | None,
    sections: Sequence[str],
    plan: BenchPlan,
    options: dict[str, Any],
    echo: Callable[[str], None],
) -> None:
    from eldefect.predictor import load_predictor
    from eldefect.registry import load_artifact
    from eldefect.settings import get_settings

    settings = get_settings()
    workdir = report["workdir"]
    name = _model_name(model_uri)
    images = {
        kind: synthetic_images(kind, plan.distinct_images, seed=i)
        for i, kind in enumerate(IMAGE_KINDS)
    }
    if image_dir is not None:
        images["strip"] = folder_images(image_dir, plan.distinct_images)
    report["model"] = {"uri": model_uri, "images": str(image_dir or "synthetic")}
    predictor = load_predictor(model_uri, backend=settings.inference_backend)  # as a worker does
    size = predictor.spec.size
    echo(
        f"{model_uri}: input 1x{size}x{size}, {torch.get_num_threads()} threads, "
        f"load {os.getloadavg()[0]:.2f}, median of {plan.repeats}"
    )
    if "limit" in sections:
        report["limit"] = limit_rows(
            serving_runtimes(load_artifact(model_uri)),
            size=size,
            batches=plan.limit_batches,
            repeats=plan.repeats,
        )
        echo("\n== limit: forward pass alone ==\n" + format_limit(report["limit"]))
    if "pipeline" in sections:
        report["pipeline"] = pipeline_rows(
            predictor,
            images["strip"],
            batch=settings.batch_size,
            repeats=plan.repeats,
            max_pixels=settings.max_image_pixels,
        )
        limit_rate = next(
            (
                r["images_per_s"]
                for r in report.get("limit", [])
                if r["batch"] == settings.batch_size and r["runtime"] == predictor.backend
            ),
            None,
        )
        echo("\n== pipeline: one process ==\n" + format_pipeline(report["pipeline"], limit_rate))
    del predictor
    if "serving" in sections:
        context = BenchContext(
            plan=plan,
            model_name=name,
            model_uri=model_uri,
            tracking_uri=settings.mlflow_tracking_uri,
            images=images,
            workdir=workdir,
            echo=echo,
            options=options,
            results=report,
        )
        sections_found = serving_sections()
        if not sections_found:
            raise RuntimeError(f"no serving sections registered under {BENCH_SECTIONS}")
        for section in sections_found.values():
            report.update(section(context))


# --- tables --------------------------------------------------------------------------------


def format_limit(rows: list[dict[str, Any]]) -> str:
    runtimes = list(dict.fromkeys(r["runtime"] for r in rows))
    by = {(r["runtime"], r["batch"]): r["images_per_s"] for r in rows}
    header = f"{'batch':>6}" + "".join(f"  {name + ' images/s':>25}" for name in runtimes)
    if len(runtimes) > 1:
        header += f"  {runtimes[-1] + ' / ' + runtimes[0]:>30}"
    lines = [header]
    for batch in dict.fromkeys(r["batch"] for r in rows):
        line = f"{batch:>6}" + "".join(f"  {by[(n, batch)]:>25.1f}" for n in runtimes)
        if len(runtimes) > 1:
            line += f"  {by[(runtimes[-1], batch)] / by[(runtimes[0], batch)]:>29.2f}x"
        lines.append(line)
    return "\n".join(lines)


def format_pipeline(row: dict[str, Any], limit_rate: float | None) -> str:
    lines = [
        f"decode+stats+preprocess+forward ({row['runtime']}, batch {row['batch']}): "
        f"{row['pipeline_images_per_s']:.1f} images/s"
        + (f" ({row['pipeline_images_per_s'] / limit_rate:.2f}x the limit)" if limit_rate else ""),
        f"decode+preprocess alone: {row['decode_preprocess_images_per_s']:.1f} images/s",
        f"one image, all of it: {row['single_image_ms']:.1f} ms",
    ]
    return "\n".join(lines)
