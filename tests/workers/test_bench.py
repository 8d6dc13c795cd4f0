"""`eldefect bench --quick`: every section runs and lands in the JSON (not its numbers).

A smoke test of the harness with a tiny model and tiny counts: a real gateway and worker on
the embedded defaults, the load generator, both peers (a synchronous FastAPI server and
`mlflow models serve`). Speed is never asserted here; the benchmark prints it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from workers.cli import eldefect_argv

SECTIONS = ("limit", "pipeline", "end_to_end", "peers", "memory", "scaling", "ratios")


@pytest.mark.slow
def test_quick_bench_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = [*eldefect_argv(), "bench", "--quick", "--arch", "cnn", "--size", "64"]
    argv += ["--workdir", str(tmp_path / "work"), "--json", str(out)]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    for key in (*SECTIONS, "machine", "commit", "command"):
        assert report.get(key), f"{key} missing or empty in {sorted(report)}"
    assert {r["runtime"] for r in report["limit"]} == {
        "torch-cpu",
        "onnxruntime-cpu",
        "onnxruntime-int8",
    }
    assert {r["stations"] for r in report["end_to_end"]} == {1, 4}
    assert {r["peer"] for r in report["peers"]} == {"sync_predict", "mlflow_serve"}
    assert {(r["workers"], r["images"]) for r in report["scaling"]} == {
        (1, "cell"),
        (1, "strip"),
        (1, "module"),
        (2, "strip"),
    }
    for row in report["end_to_end"] + report["peers"]:  # the smoke run's jobs all ended well
        assert row["not_succeeded"] == 0 and row["unfinished"] == 0, row
    assert "== end to end" in run.stdout and "== peers" in run.stdout
