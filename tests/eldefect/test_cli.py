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


def _synth(folder: Path, n: int) -> Path:
    result = CliRunner().invoke(cli, ["synth", "--out", str(folder), "--n", str(n), "--size", "48"])
    assert result.exit_code == 0, result.output
    return folder


TINY = "name: tiny\ninput: {size: 32}\nmodel: {arch: cnn, width: 4, depth: 1}\n"


def assert_one_line_error(args: list[str], says: str, exit_code: int = 1) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == exit_code, result.output
    assert says in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


def test_a_bad_setting_names_its_variable_and_help_still_works(
    settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eldefect.settings import get_settings

    monkeypatch.setenv("ELDEFECT_BATCH_SIZE", "0")
    get_settings.cache_clear()
    assert_one_line_error(["token", "list"], "invalid settings: ELDEFECT_BATCH_SIZE: ")
    assert CliRunner().invoke(cli, ["synth", "--help"]).exit_code == 0
    monkeypatch.setenv("ELDEFECT_BATCH_SIZE", "16")
    monkeypatch.setenv("ELDEFECT_LOG_LEVEL", "loud")
    get_settings.cache_clear()
    assert_one_line_error(["token", "list"], "ELDEFECT_LOG_LEVEL: Input should be 'DEBUG'")
    monkeypatch.setenv("ELDEFECT_LOG_LEVEL", "debug")  # any case, as logging takes it
    get_settings.cache_clear()
    assert get_settings().log_level == "DEBUG"


def test_a_database_that_cannot_be_reached_is_one_line(
    settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eldefect.settings import get_settings

    for url, says in [
        ("postgresql+psycopg://postgres@127.0.0.1:1/x", "Connection refused"),
        ("nonsense://x", "sqlalchemy.dialects:nonsense"),
    ]:
        monkeypatch.setenv("ELDEFECT_DATABASE_URL", url)
        get_settings.cache_clear()
        assert_one_line_error(["token", "list"], "a database cannot be used (check")
        assert_one_line_error(["token", "list"], says)
    # A URL that can never work stops the gateway at start (one that is down does not).
    assert_one_line_error(["gateway", "--port", "8765"], "sqlalchemy.dialects:nonsense")


def test_training_mistakes_are_one_clear_line(tmp_path: Path, settings_env: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    one = _synth(tmp_path / "one", 1)
    few = _synth(tmp_path / "few", 6)
    empty = tmp_path / "empty"
    (empty / "JPEGImages").mkdir(parents=True)
    (empty / "Annotations").mkdir()

    assert_one_line_error(
        ["train", "--config", str(broken)], "is not a readable YAML file", exit_code=2
    )
    assert_one_line_error(["train", "--config", str(tmp_path)], "is a folder, not a file", 2)
    assert_one_line_error(["train", "--config", str(config)], "no dataset folder: give --data")
    assert_one_line_error(
        ["train", "--config", str(config), "--data", str(empty)], "holds no labelled images"
    )
    assert_one_line_error(
        ["train", "--config", str(config), "--data", str(one)],
        "1 images cannot make both a training and a validation split",
    )
    assert_one_line_error(
        ["train", "--config", str(config), "--data", str(few), "--cv", "30"],
        "6 images cannot fill 30 folds",
    )
    assert_one_line_error(["train", "--config", str(config), "--device", "tpu"], "tpu", 2)


def test_other_commands_refuse_mistakes_in_one_line(tmp_path: Path, settings_env: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert_one_line_error(
        ["synth", "--out", str(tmp_path / "s"), "--classes", "crack,bogus"], "bogus"
    )
    assert_one_line_error(["synth", "--out", str(a_file)], "is a file", exit_code=2)
    assert_one_line_error(["token", "create", "--station", "  "], "a station needs a name", 2)
    assert_one_line_error(["gateway", "--port", "70000"], "70000", exit_code=2)
    assert_one_line_error(["promote", "--version", "abc"], "'abc' is not a valid integer", 2)


def test_evaluate_on_a_folder_without_labelled_images_is_one_line(
    production_model: ModelStore, tmp_path: Path
) -> None:
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "Annotations").mkdir()
    assert_one_line_error(["evaluate", "--data", str(tmp_path)], "holds no labelled images")


def test_evaluate_leaves_out_an_unreadable_image_and_names_it(
    production_model: ModelStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import shutil

    folder = tmp_path / "voc"
    shutil.copytree(production_model.images, folder)
    images = sorted((folder / "JPEGImages").iterdir())
    images[0].write_bytes(images[0].read_bytes()[:60])  # cut inside the pixel data
    with caplog.at_level("WARNING", logger="eldefect.evaluate"):
        result = CliRunner().invoke(cli, ["evaluate", "--data", str(folder)])
    assert result.exit_code == 0, result.output
    assert f"{images[0]}: " in caplog.text and "left out of the scores" in caplog.text
    assert f"{len(images) - 1} images" in result.output
