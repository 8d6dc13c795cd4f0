"""monitoring/ stays light: it imports neither workers, gateway nor torch (DESIGN.md)."""

from __future__ import annotations

import subprocess
import sys

MODULES = (
    "monitoring.metrics",
    "monitoring.collector",
    "monitoring.exporter",
    "monitoring.dashboards",
)


def test_monitoring_imports_no_workers_gateway_or_torch() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {MODULES!r}: importlib.import_module(name)\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'workers', 'gateway', 'torch'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"monitoring imported {out.stdout.strip()}"
