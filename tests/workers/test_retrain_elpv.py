"""Retraining on real EL data (issue 7, test 3): a champion trained on monocrystalline ELPV
cells only serves polycrystalline cells; operators review them with their ELPV labels; the
challenger retrained with those reviews beats the champion on the held-back poly reviews.

    ELDEFECT_REAL_DATA=/work/shared/data .venv/bin/pytest -s -m real_data \\
        tests/workers/test_retrain_elpv.py

The figures docs/monitoring.md and docs/retraining.md quote are the ones it prints.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from db import retrains
from db.migrate import upgrade
from db.models import Job
from db.reviews import create_review
from db.session import session_scope
from eldefect.data.readers import read_elpv
from eldefect.labels import load_label_set
from eldefect.settings import get_settings
from tests.monitoring.test_elpv_drift import serve_through_worker
from workers.retrain import run_retrain

pytestmark = [pytest.mark.real_data, pytest.mark.slow]
SERVED = 400  # poly cells served and reviewed (of 1235)
# A small, fast recipe (as in tests/monitoring/test_elpv_drift.py), for champion and
# challenger alike: the difference between them is the reviewed poly cells, nothing else.
RECIPE = {
    "labels": "elpv",
    "input": {"size": 64, "mean": 0.6, "std": 0.16},
    "model": {"arch": "cnn", "width": 8, "depth": 3},
    "augment": {"rotate_degrees": 0, "brightness": 0, "contrast": 0, "gamma": 0},
    "optim": {"epochs": 5, "batch_size": 32, "lr": 0.003, "threads": 2},
}


def _config(path: Path, elpv: Path, name: str) -> Path:
    data = {"format": "elpv", "root": str(elpv), "cell_type": "mono", "labels": "elpv"}
    body = {"name": name, "data": data, **{k: v for k, v in RECIPE.items() if k != "labels"}}
    path.write_text(yaml.safe_dump(body))
    return path


def test_a_challenger_retrained_with_reviewed_poly_cells_beats_the_mono_champion_on_them(
    real_data: Path, settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eldefect.config import load_train_config
    from eldefect.predictor import load_predictor
    from eldefect.registry import model_uri, promote, register_run, resolve_alias
    from eldefect.train import train

    started = time.monotonic()
    elpv = real_data / "elpv"
    config = _config(settings_env / "retrain.yaml", elpv, "elpv-retrain")
    for key, value in {
        "ELDEFECT_RETRAIN_CONFIG": str(config),
        "ELDEFECT_RETRAIN_HOLDOUT_FRACTION": "0.3",
        "ELDEFECT_RETRAIN_MIN_HOLDOUT": "20",
    }.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    settings = get_settings()
    upgrade(settings.database_url)

    # The champion: the same recipe on mono cells only.
    champion = load_train_config(_config(settings_env / "mono.yaml", elpv, "elpv-mono"))
    outcome = train(champion, settings=settings, progress=False)
    version = register_run(outcome.run_id, settings.model_name)
    promote(name=settings.model_name, version=version, to_production=True)
    model = load_predictor(
        model_uri(settings.model_name, version),
        backend="torch",
        name=settings.model_name,
        version=version,
    )

    # Poly cells served by it, then reviewed with their ELPV labels.
    labels = load_label_set("elpv")
    poly, _ = read_elpv(elpv, labels, cell_type="poly")
    order = np.random.default_rng(0).permutation(len(poly))[:SERVED]
    cells = [poly[i] for i in sorted(order)]
    ids = serve_through_worker([c.path for c in cells], settings, model)
    with session_scope(settings.database_url) as session:
        for job_id, cell in zip(ids, cells, strict=True):
            job = session.get(Job, job_id)
            assert job is not None
            defects = [labels.labels[i] for i in np.flatnonzero(cell.target)]
            create_review(session=session, job=job, defects=defects, comment=None, reviewer_id=None)
        trigger = retrains.open_trigger(session=session, reason="manual", requested_by="test")
        assert trigger is not None
        trigger_id = trigger.id
    served_s = time.monotonic() - started

    result = run_retrain(trigger_id=trigger_id, settings=settings, worker="test")

    assert result is not None, "the retraining failed (see the log)"
    gate = result.gate
    holdout = gate["sets"]["holdout"]
    champ, chall = holdout["champion"], holdout["challenger"]
    print(
        f"\nFIGURES elpv retrain: champion v{version} trained on mono cells only; {SERVED} poly "
        f"cells served and reviewed ({gate['reviews']['train']} trained on, "
        f"{gate['reviews']['holdout']} held back); on the held-back poly reviews: accuracy "
        f"challenger {chall['accuracy']:.3f} vs champion {champ['accuracy']:.3f}, AP "
        f"(defective) {chall['ap']['defective']:.3f} vs {champ['ap']['defective']:.3f}, recall "
        f"{chall['recall']['defective']:.3f} vs {champ['recall']['defective']:.3f}; decision "
        f"{result.decision}{' (' + '; '.join(gate['reasons']) + ')' if gate['reasons'] else ''}"
        f"; champion and serving {served_s:.0f} s, whole test {time.monotonic() - started:.0f} s"
    )
    assert gate["reviews"]["train"] + gate["reviews"]["holdout"] == SERVED
    assert chall["n_images"] == champ["n_images"] == gate["reviews"]["holdout"]
    assert chall["accuracy"] > champ["accuracy"]
    assert chall["ap"]["defective"] > champ["ap"]["defective"]
    assert chall["macro_ap"] > champ["macro_ap"]
    # The champion's recall came from calling nearly every poly cell defective: the gate
    # notes that and does not hold it against the challenger (eldefect/gate.py).
    assert result.decision == "staged", gate["reasons"]
    assert resolve_alias(settings.model_name, settings.model_alias) == version  # no auto-promotion
