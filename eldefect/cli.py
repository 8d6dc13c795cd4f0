"""`eldefect <command>`: the ML commands live here; serving commands plug in by entry point.

Heavy imports (torch, MLflow) happen inside each command so `eldefect --help` stays instant.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, cast

import click

from eldefect.settings import SettingsError, get_settings

if TYPE_CHECKING:
    from eldefect.predictor import Backend

PLUGIN_GROUP = "eldefect.commands"


def _user_message(exc: Exception) -> str | None:
    """One line for an error the user can fix (a path, a config, a model name, a database
    that cannot be reached), or None for a bug, which keeps its traceback."""
    from mlflow.exceptions import MlflowException  # only on the error path: MLflow is slow
    from sqlalchemy.exc import ArgumentError, OperationalError

    from eldefect.config import ConfigError
    from eldefect.data.readers import DatasetError
    from eldefect.imaging import ImageDecodeError
    from eldefect.labels import LabelSetError
    from eldefect.predictor import BackendUnavailable

    user_errors = (
        BackendUnavailable,
        ConfigError,
        DatasetError,
        ImageDecodeError,
        LabelSetError,
        MlflowException,
        SettingsError,
    )
    if isinstance(exc, user_errors):
        return str(exc)
    if isinstance(exc, OperationalError | ArgumentError):  # unreachable, or a malformed URL
        # SQLAlchemy appends the statement and a link on later lines; the reason is the first.
        reason = str(exc).strip().splitlines()[0]
        where = "check ELDEFECT_DATABASE_URL and MLFLOW_TRACKING_URI"
        return f"a database cannot be used ({where}): {reason}"
    return None


def require_cuda() -> None:
    """Refuse `--device cuda` where torch sees no CUDA device: one line, no traceback."""
    import torch

    if not torch.cuda.is_available():
        raise click.ClickException(
            "--device cuda, but torch sees no CUDA device on this machine "
            f"(torch {torch.__version__}); use --device cpu or run it on a GPU host"
        )


class EldefectCLI(click.Group):
    """A click group that also lists the commands other packages register by entry point."""

    def _plugins(self) -> dict[str, object]:
        return {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._plugins()))

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            message = _user_message(exc)
            if message is not None:  # a clear one-line message instead of a traceback
                raise click.ClickException(message) from None
            raise

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        ep = self._plugins().get(cmd_name)
        return ep.load() if ep is not None else None  # type: ignore[attr-defined]


@click.group(cls=EldefectCLI, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default=None,
    help="Default: ELDEFECT_LOG_LEVEL, else INFO.",
)
def cli(log_level: str | None) -> None:
    """Find defects in electroluminescence images of solar cells."""
    try:
        level = (log_level or get_settings().log_level).upper()
    except SettingsError:  # said by the command that needs the settings (--help does not)
        level = "INFO"
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    if level != "DEBUG":  # Alembic logs each plugin and step it sets up; we log what it did
        logging.getLogger("alembic").setLevel(logging.WARNING)


def main() -> None:
    cli()


@cli.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder to write.",
)
@click.option("--n", "n", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--size", type=click.IntRange(min=32), default=256, show_default=True)
@click.option("--classes", default=None, help="Comma-separated subset of classes to draw.")
def synth(out: Path, n: int, seed: int, size: int, classes: str | None) -> None:
    """Write a synthetic EL dataset in Pascal VOC layout."""
    from eldefect.data.synth import write_synthetic_dataset

    chosen = [c.strip() for c in classes.split(",")] if classes else None
    write_synthetic_dataset(out, n=n, seed=seed, size=size, classes=chosen)
    click.echo(f"wrote {n} images to {out}")


@cli.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True)
@click.option("--data", type=click.Path(path_type=Path), default=None, help="Dataset folder.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override optim.epochs.")
@click.option(
    "--cv",
    "cv_folds",
    type=click.IntRange(min=2),
    default=None,
    help="First run K-fold cross-validation: print the per-class table, then train the "
    "final model with thresholds tuned on the out-of-fold predictions.",
)
@click.option(
    "--final/--no-final",
    default=True,
    show_default=True,
    help="With --cv: train the final model after the folds.",
)
@click.option("--register/--no-register", default=False, help="Register the model afterwards.")
def train(
    config_path: Path,
    data: Path | None,
    device: str,
    epochs: int | None,
    cv_folds: int | None,
    final: bool,
    register: bool,
) -> None:
    """Train a model from a YAML config and log it to MLflow."""
    from eldefect.config import ConfigError, load_train_config
    from eldefect.metrics import macro
    from eldefect.train import train as run_training

    try:
        config = load_train_config(config_path)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    if device == "cuda":
        require_cuda()
    if epochs:
        config.optim.epochs = epochs
    cv = None
    if cv_folds:
        from eldefect.crossval import cross_validate

        cv = cross_validate(config, cv_folds, data_root=data, device=device)
        click.echo(cv.report())
        if not final:
            return
    outcome = run_training(config, data_root=data, device=device, cv=cv)
    m = outcome.metrics
    click.echo(
        f"run {outcome.run_id}: kept epoch {outcome.best_epoch}, "
        f"val macro AP {m['best_val_macro_ap']:.4f}, "
        f"val macro recall at its thresholds {macro(outcome.per_class, 'recall'):.4f}, "
        f"{m['train_minutes']:.1f} min, peak RSS {m['peak_rss_mb']:.0f} MB"
    )
    if register:
        _register_and_promote(outcome.run_id, None, to_production=False)


def _register_and_promote(run_id: str | None, version: str | None, *, to_production: bool) -> None:
    from eldefect.registry import configure_mlflow, latest_training_run, promote, register_run

    settings = get_settings()
    configure_mlflow(settings)
    if version is None:
        run_id = run_id or latest_training_run(settings)
        version = register_run(run_id, settings.model_name)
        click.echo(f"registered run {run_id} as {settings.model_name} v{version}")
    decision = promote(name=settings.model_name, version=version, to_production=to_production)
    click.echo(decision.describe())


@cli.command()
@click.option("--run-id", default=None, help="Training run to register (default: the latest).")
@click.option(
    "--version",
    type=click.IntRange(min=1),
    default=None,
    help="An already registered version (a number) instead.",
)
@click.option(
    "--to",
    "target",
    type=click.Choice(["staging", "production"]),
    default="staging",
    show_default=True,
    help="staging: only when it beats the served alias (ELDEFECT_MODEL_ALIAS, default "
    "production); production: move the served alias to it too.",
)
def promote(run_id: str | None, version: int | None, target: str) -> None:
    """Register a run's model and move registry aliases, printing the comparison."""
    if run_id and version:
        raise click.UsageError("give --run-id or --version, not both")
    chosen = None if version is None else str(version)
    _register_and_promote(run_id, chosen, to_production=target == "production")


def _default_model_uri() -> str:
    settings = get_settings()
    return f"models:/{settings.model_name}@{settings.model_alias}"


@cli.command()
@click.option("--model-uri", default=None, help="Default: models:/NAME@ALIAS from settings.")
@click.option(
    "--data", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True
)
@click.option(
    "--format", "data_format", type=click.Choice(["voc", "elpv"]), default="voc", show_default=True
)
@click.option(
    "--backend",
    type=click.Choice(["auto", "int8", "onnx", "torch"]),
    default=None,
    help="What computes the probabilities. Default: ELDEFECT_INFERENCE_BACKEND, as workers.",
)
def evaluate(model_uri: str | None, data: Path, data_format: str, backend: str | None) -> None:
    """Score a model on a labelled folder (recall, precision, F1, AP per class), as served."""
    from eldefect.evaluate import evaluate_model

    result = evaluate_model(
        model_uri or _default_model_uri(),
        data,
        data_format=data_format,
        backend=cast("Backend | None", backend),
    )
    click.echo(result.report())


@cli.command()
@click.argument(
    "images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--model-uri", default=None, help="Default: models:/NAME@ALIAS from settings.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image.")
def predict(images: tuple[Path, ...], model_uri: str | None, as_json: bool) -> None:
    """Per-class probabilities and the defects over threshold, for each image."""
    from eldefect.imaging import ImageDecodeError, decode_gray
    from eldefect.predictor import load_predictor
    from eldefect.registry import configure_mlflow

    settings = get_settings()
    configure_mlflow(settings)
    predictor = load_predictor(model_uri or _default_model_uri(), backend="torch")
    decoded, failed = [], []
    for path in images:
        try:
            decoded.append(
                (
                    path,
                    decode_gray(
                        path.read_bytes(),
                        max_pixels=settings.max_image_pixels,
                        min_side=predictor.input_size,
                    ),
                )
            )
        except ImageDecodeError as exc:
            failed.append(path)
            click.echo(f"{path}: {exc.message}", err=True)
    probs = predictor.predict([gray for _, gray in decoded])
    for (path, _), row in zip(decoded, probs, strict=True):
        result = predictor.result(row)
        if as_json:
            click.echo(json.dumps({"image": str(path), **dataclasses.asdict(result)}))
            continue
        click.echo(f"{path}: defects {', '.join(result.defects) or 'none'}")
        for label, p in sorted(result.probabilities.items(), key=lambda kv: -kv[1]):
            click.echo(f"  {label:<24}{p:8.4f}  (threshold {result.thresholds[label]:.3f})")
    if failed:
        sys.exit(1)


@cli.command()
@click.option(
    "--model-uri",
    default=None,
    help="A registered model, models:/NAME@ALIAS; default: an untrained --arch registered "
    "under a fresh MLflow store in the work folder.",
)
@click.option(
    "--arch", type=click.Choice(["cnn", "resnet18"]), default="resnet18", show_default=True
)
@click.option("--size", type=click.IntRange(min=32), default=224, show_default=True)
@click.option(
    "--images",
    "image_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Serve these images as the strips (default: synthetic 600 px JPEG strips).",
)
@click.option(
    "--only",
    default="limit,pipeline,serving",
    show_default=True,
    help="Sections to run (serving: end to end, peers, memory, scaling).",
)
@click.option("--quick", is_flag=True, help="Tiny counts: a smoke test of every section.")
@click.option("--postgres-url", default=None, help="Also run end to end on Postgres + Redis.")
@click.option("--redis-url", default=None, help="The Redis broker for --postgres-url.")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Default: var/bench/<time>.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Default: WORKDIR/bench.json.",
)
def bench(
    model_uri: str | None,
    arch: str,
    size: int,
    image_dir: Path | None,
    only: str,
    quick: bool,
    postgres_url: str | None,
    redis_url: str | None,
    workdir: Path | None,
    json_path: Path | None,
) -> None:
    """Measure serving speed: forward pass, pipeline, end to end, peers (medians, ratios)."""
    from eldefect.bench import run_bench

    if bool(postgres_url) != bool(redis_url):
        raise click.UsageError("--postgres-url and --redis-url go together")
    # A SIGTERM unwinds like Ctrl-C, so the servers the run started are stopped with it.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    report = run_bench(
        model_uri=model_uri,
        arch=arch,
        size=size,
        image_dir=image_dir,
        sections=[s.strip() for s in only.split(",") if s.strip()],
        quick=quick,
        options={"postgres_url": postgres_url, "redis_url": redis_url},
        workdir=workdir,
        command=" ".join(["eldefect", *sys.argv[1:]]),
        echo=click.echo,
    )
    path = json_path or report["workdir"] / "bench.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**report, "workdir": str(report["workdir"])}, indent=2) + "\n")
    click.echo(f"results: {path}")


@cli.command()
@click.option("--images", "n_images", type=click.IntRange(min=1), default=24, show_default=True)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run in a folder of its own: WORKDIR/var holds its database, registry and images "
    "(WORKDIR/var/demo the dataset). Default: the configured var/, the dataset in var/demo.",
)
def demo(n_images: int, workdir: Path | None) -> None:
    """Synthesise, train, promote, serve and query: the whole job end to end."""
    from eldefect.demo import run_demo

    sys.exit(run_demo(n_images=n_images, workdir=workdir))
