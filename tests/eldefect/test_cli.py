from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from eldefect.cli import cli
from tests.conftest import ModelStore


def test_help_lists_every_contract_command() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in (
        "synth",
        "train",
        "evaluate",
        "promote",
        "predict",
        "gateway",
        "worker",
        "beat",
        "up",
        "token",
        "demo",
        "bench",
    ):
        assert command in result.output, command


def test_synth_writes_a_voc_dataset(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["synth", "--out", str(tmp_path), "--n", "3", "--size", "64"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "JPEGImages").iterdir())) == 3
    assert len(list((tmp_path / "Annotations").iterdir())) == 3


def test_train_refuses_a_bad_config_clearly(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  epochs: 0\n  learning_rate: 1\n")
    result = CliRunner().invoke(cli, ["train", "--config", str(bad)])
    assert result.exit_code == 2
    assert "epochs" in result.output and "learning_rate" in result.output


def test_predict_json_uses_the_production_model(production_model: ModelStore) -> None:
    images = sorted((production_model.images / "JPEGImages").iterdir())[:2]
    result = CliRunner().invoke(cli, ["predict", "--json", *map(str, images)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert [r["image"] for r in rows] == [str(p) for p in images]
    assert all(set(r) == {"image", "probabilities", "defects", "thresholds"} for r in rows)


def test_evaluate_prints_per_class_table(production_model: ModelStore) -> None:
    result = CliRunner().invoke(cli, ["evaluate", "--data", str(production_model.images)])
    assert result.exit_code == 0, result.output
    assert "tuned thresholds" in result.output and "threshold 0.5" in result.output
    assert "macro" in result.output
    assert "95% bootstrap intervals" in result.output and "calibration error" in result.output
    # Scored as workers serve it (auto: the int8 copy if it passed its check), unless told.
    assert "images (onnxruntime-" in result.output
    forced = CliRunner().invoke(
        cli, ["evaluate", "--data", str(production_model.images), "--backend", "torch"]
    )
    assert forced.exit_code == 0, forced.output
    assert "images (torch-cpu)" in forced.output


def test_promote_prints_the_comparison(production_model: ModelStore) -> None:
    result = CliRunner().invoke(
        cli, ["promote", "--version", production_model.v2, "--to", "production"]
    )
    assert result.exit_code == 0, result.output
    assert f"candidate {production_model.name} v{production_model.v2}" in result.output
    assert "production ->" in result.output


def test_bench_limit_reports_each_runtime(tmp_path: Path) -> None:
    args = ["bench", "--only", "limit", "--quick", "--arch", "cnn", "--size", "64"]
    result = CliRunner().invoke(cli, [*args, "--workdir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    runtimes = ("torch-cpu", "onnxruntime-cpu", "onnxruntime-int8")
    for runtime in runtimes:
        assert runtime in result.output
    rows = json.loads((tmp_path / "bench.json").read_text())["limit"]
    assert {(r["runtime"], r["batch"]) for r in rows} == {
        (runtime, batch) for runtime in runtimes for batch in (1, 4)
    }


def test_user_errors_are_one_clear_line(tmp_path: Path, settings_env: Path) -> None:
    config = Path(__file__).parents[2] / "configs/train/pv_multi_defect.yaml"
    result = CliRunner().invoke(cli, ["train", "--config", str(config), "--data", str(tmp_path)])
    assert result.exit_code == 1
    assert "is not a Pascal VOC folder" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["promote", "--version", "7"])
    assert result.exit_code == 1 and "Error:" in result.output


def test_promote_moves_the_alias_workers_serve(
    production_model: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eldefect.registry import resolve_alias
    from eldefect.settings import get_settings

    monkeypatch.setenv("ELDEFECT_MODEL_ALIAS", "champion")
    get_settings.cache_clear()
    result = CliRunner().invoke(
        cli, ["promote", "--version", production_model.v2, "--to", "production"]
    )
    assert result.exit_code == 0, result.output
    assert f"champion -> v{production_model.v2}" in result.output
    assert resolve_alias(production_model.name, "champion") == production_model.v2
    assert resolve_alias(production_model.name, "production") == production_model.v1


def test_a_cuda_worker_without_cuda_refuses_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = CliRunner().invoke(cli, ["worker", "--queue", "inference.gpu"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith("Error: --device cuda, but torch sees no")
    assert result.exception is None or isinstance(result.exception, SystemExit)
