"""`eldefect retrain status` prints the gate's numbers; `dataset export-reviews` writes VOC."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from db import retrains
from db.migrate import upgrade
from db.session import session_scope
from eldefect.cli import cli
from eldefect.settings import get_settings
from tests.workers import loop_data

GATE = {
    "passed": False,
    "reasons": ["holdout: recall of crack 0.4000 < champion 0.9000 - margin 0.05"],
    "sets": {
        "holdout": {
            "passed": False,
            "reasons": [],
            "champion": {"n_images": 9, "macro_ap": 0.8, "accuracy": 0.7, "recall": {"crack": 0.9}},
            "challenger": {
                "n_images": 9,
                "macro_ap": 0.6,
                "accuracy": 0.5,
                "recall": {"crack": 0.4},
            },
        }
    },
}


def test_status_prints_the_decision_and_the_numbers_behind_it(settings_env: Path) -> None:
    url = get_settings().database_url
    upgrade(url)
    with session_scope(url) as session:
        trigger = retrains.open_trigger(session=session, reason="drift", requested_by="beat")
        assert trigger is not None
        retrains.start_trigger(session=session, trigger_id=trigger.id, worker="w", lease_s=60)
        retrains.finish_trigger(
            session=session, trigger_id=trigger.id, decision="rejected", gate=GATE,
            champion_version="1",
        )  # fmt: skip
    out = CliRunner().invoke(cli, ["retrain", "status"]).output
    assert "drift" in out and "rejected" in out
    assert "challenger n=9 macro AP 0.6000 accuracy 0.5000 recall: crack 0.4000" in out
    assert "recall of crack 0.4000 < champion 0.9000" in out


def test_export_reviews_writes_a_folder_train_reads_without_the_held_back_jobs(
    settings_env: Path, monkeypatch
) -> None:
    monkeypatch.setenv("ELDEFECT_RETRAIN_HOLDOUT_FRACTION", "0.5")
    get_settings.cache_clear()
    url = get_settings().database_url
    upgrade(url)
    served = loop_data.write_synthetic_dataset(
        settings_env / "served", n=12, seed=1, size=48, classes=loop_data.CLASSES, progress=False
    )
    labels = ["crack", "black_core", "thick_line", "corner", "fragment"]
    jobs = loop_data.served_and_reviewed(url, served, labels=labels)
    result = CliRunner().invoke(
        cli,
        ["dataset", "export-reviews", "--out", str(settings_env / "out"),
         "--holdout-out", str(settings_env / "held")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    written = {p.stem for p in (settings_env / "out" / "JPEGImages").iterdir()}
    held = {p.stem for p in (settings_env / "held" / "JPEGImages").iterdir()}
    assert written | held == set(jobs) and not written & held and written and held
