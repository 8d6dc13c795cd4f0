"""Drift on real EL data: a model trained on monocrystalline ELPV cells only.

Polycrystalline cells served to it must raise input drift; monocrystalline cells it never
trained on must not. The figures docs/monitoring.md quotes are printed by these tests:

    ELDEFECT_REAL_DATA=/work/shared/data .venv/bin/pytest -s -m real_data tests/monitoring
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from db.migrate import upgrade
from db.models import Job, JobStatus
from db.session import session_scope
from eldefect.config import (
    AugmentConfig,
    DataConfig,
    InputConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from eldefect.imaging import decode_gray
from eldefect.settings import Settings
from eldefect.stats import FEATURES, feature_profile, input_statistics
from monitoring.cli import format_report
from monitoring.drift import Kind, Verdict, feature_measures
from monitoring.reports import ReportView, run_drift_check
from tests.workers.factories import make_job, make_station
from workers.model_cache import ServingModel

pytestmark = pytest.mark.real_data
WINDOW = 200


@dataclass(frozen=True)
class MonoSplit:
    """ELPV cells by file name: monocrystalline ones to train on and held out, poly ones."""

    root: Path  # the real elpv folder
    train: list[str]
    held_out: list[str]  # mono, never trained on
    poly: list[str]

    def write_training_folder(self, folder: Path) -> Path:
        """An ELPV-layout folder whose labels.csv lists only the training cells (the images
        are the real ones, linked, never copied)."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "images").symlink_to(self.root / "images", target_is_directory=True)
        rows = {row[0]: row for row in _rows(self.root)}
        (folder / "labels.csv").write_text("".join(" ".join(rows[p]) + "\n" for p in self.train))
        return folder


def _rows(root: Path) -> list[list[str]]:
    with (root / "labels.csv").open() as fh:
        return [row for row in csv.reader(fh, delimiter=" ", skipinitialspace=True) if row]


def mono_split(real_data: Path, seed: int = 0) -> MonoSplit:
    """A seeded random hold-out of WINDOW mono cells, and WINDOW random poly cells."""
    root = real_data / "elpv"
    rows = _rows(root)
    mono = [r[0] for r in rows if r[2] == "mono"]
    poly = [r[0] for r in rows if r[2] == "poly"]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(mono))
    held = [mono[i] for i in order[:WINDOW]]
    train = [mono[i] for i in sorted(order[WINDOW:])]
    return MonoSplit(root, train, held, [poly[i] for i in rng.permutation(len(poly))[:WINDOW]])


def serve_through_worker(paths: list[Path], settings: Settings, model: ServingModel) -> list[str]:
    """Queue one job per image file and run worker batches until none is left queued;
    returns the job ids, in the order of `paths`."""
    from workers.inference import process_batch

    with session_scope(settings.database_url) as session:
        station = make_station(session)
        ids = [make_job(session, station=station, data=path.read_bytes()).id for path in paths]
    while process_batch(settings=settings, model_source=lambda: model).claimed:
        pass
    with session_scope(settings.database_url) as session:
        done = session.scalar(
            select(func.count()).select_from(Job).where(Job.status == JobStatus.succeeded)
        )
    assert done is not None and done % WINDOW == 0, f"{done} jobs succeeded"
    return ids


def drifted(report: ReportView, kind: Kind) -> list[str]:
    return [m.name for m in report.measures if m.kind is kind and m.drifted]


@pytest.mark.slow
def test_poly_cells_raise_input_drift_and_held_out_mono_cells_do_not(
    real_data: Path, settings_env: Path
) -> None:
    from eldefect.predictor import load_predictor
    from eldefect.registry import model_uri, promote, register_run
    from eldefect.settings import get_settings
    from eldefect.train import train

    settings = get_settings()  # the embedded defaults under a temporary var/ (settings_env)
    upgrade(settings.database_url)
    split = mono_split(real_data)
    # A small, fast recipe: drift needs a served model, not a good one.
    config = TrainConfig(
        name="elpv-mono",
        data=DataConfig(format="elpv", labels="elpv", val_fraction=0.2),
        input=InputConfig(size=64, mean=0.6, std=0.16),
        model=ModelConfig(arch="cnn", width=8, depth=3),
        augment=AugmentConfig(rotate_degrees=0, brightness=0, contrast=0, gamma=0),
        optim=OptimConfig(epochs=4, batch_size=32, lr=0.003, threads=2),
    )
    outcome = train(
        config,
        data_root=split.write_training_folder(settings_env / "elpv-mono"),
        settings=settings,
        progress=False,
    )
    profile = outcome.card.profile
    assert profile["n_images"] + profile["n_validation_images"] == len(split.train)
    assert set(profile["predicted_positive_rates"]) == {"defective"}
    version = register_run(outcome.run_id, settings.model_name)
    promote(name=settings.model_name, version=version, to_production=True)
    model = load_predictor(
        model_uri(settings.model_name, version),
        backend="torch",
        name=settings.model_name,
        version=version,
    )

    serve_through_worker([split.root / p for p in split.held_out], settings, model)
    mono = run_drift_check(settings=settings)  # the production card, read from the registry
    assert mono is not None
    print(f"\nmono-trained model, {WINDOW} held-out mono cells:\n{format_report(mono)}")

    serve_through_worker([split.root / p for p in split.poly], settings, model)
    poly = run_drift_check(settings=settings)
    assert poly is not None
    print(f"\nmono-trained model, {WINDOW} poly cells:\n{format_report(poly)}")

    assert mono.model_version == poly.model_version == version
    assert mono.n == poly.n == WINDOW, "each check's latest window is the cells just served"
    assert mono.notes == [] and poly.notes == []
    assert drifted(mono, Kind.feature) == [], "held-out mono cells look like the training ones"
    assert mono.verdict is Verdict.ok
    assert "texture" in drifted(poly, Kind.feature), "poly grain shows as texture"
    assert poly.verdict is Verdict.drift


def test_elpv_statistics_separate_poly_from_mono_at_the_default_thresholds(
    real_data: Path,
) -> None:
    """No model needed: the input statistics alone, over several random hold-outs, and over
    the mono cells from the end of the file list (other modules) as a harder case."""
    defaults = Settings()
    split = mono_split(real_data)
    stats = {
        p: input_statistics(decode_gray((split.root / p).read_bytes(), max_pixels=10**8))
        for p in [*split.train, *split.held_out, *split.poly]
    }

    def measures(train: list[str], window: list[str]) -> dict[str, tuple[float, float, bool]]:
        table = np.array([[stats[p][f] for f in FEATURES] for p in window])  # (n, F)
        out = feature_measures(
            table,
            FEATURES,
            feature_profile(stats[p] for p in train),
            z_threshold=defaults.drift_z_threshold,
            effect_threshold=defaults.drift_effect_threshold,
        )
        return {m.name: (m.z, m.effect, m.drifted) for m in out}

    def show(label: str, found: dict[str, tuple[float, float, bool]]) -> None:
        cells = "  ".join(f"{f} z={z:+.1f} d={d:+.2f}" for f, (z, d, _) in found.items())
        print(f"{label:<28}{cells}")

    print()
    mono_cells = sorted(split.train + split.held_out)
    poly = measures(split.train, split.poly)
    show("poly vs mono", poly)
    assert poly["texture"][2], "the poly window drifts on texture"
    worst_z = worst_d = 0.0
    for seed in range(10):
        other = mono_split(real_data, seed=seed)
        held = measures(other.train, other.held_out)
        show(f"held-out mono, seed {seed}", held)
        assert not any(drift for _, _, drift in held.values())
        worst_z = max(worst_z, *(abs(z) for z, _, _ in held.values()))
        worst_d = max(worst_d, *(abs(d) for _, d, _ in held.values()))
    print(f"held-out mono, 10 seeds: largest |z| {worst_z:.1f}, largest |d| {worst_d:.2f}")
    tail = measures(mono_cells[:-WINDOW], mono_cells[-WINDOW:])
    show("last 200 mono (other modules)", tail)
