"""monitoring/ stays light: it imports neither workers, gateway nor torch (DESIGN.md)."""

from __future__ import annotations

from tests.fresh_python import fresh_python

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
    out = fresh_python(code)
    assert out.strip() == "", f"monitoring imported {out.strip()}"
