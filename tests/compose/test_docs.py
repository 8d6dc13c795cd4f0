"""docs/operations.md and docs/api.md keep up with the settings, routes and error codes."""

from __future__ import annotations

import re
from pathlib import Path

from eldefect.settings import Settings

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _env_names(field: str) -> list[str]:
    alias = Settings.model_fields[field].validation_alias
    choices = getattr(alias, "choices", None)
    if choices:
        return [str(choice) for choice in choices]
    return [f"ELDEFECT_{field.upper()}"]


def test_operations_doc_lists_every_setting_with_its_default() -> None:
    text = (DOCS / "operations.md").read_text()
    rows = {
        line.split("|")[1].strip(): line
        for line in text.splitlines()
        if line.startswith("| `") and line.count("|") >= 4
    }
    for field, info in Settings.model_fields.items():
        names = _env_names(field)
        row = next((line for key, line in rows.items() if f"`{names[0]}`" in key), None)
        assert row is not None, f"docs/operations.md has no row for {names[0]} ({field})"
        default = info.default
        if isinstance(default, bool):
            expected = str(default).lower()
        elif default is None:
            expected = "unset"
        else:
            expected = str(default)
        assert expected in row, f"{names[0]}: default {expected!r} not in {row!r}"


def test_api_doc_names_every_route_and_error_code() -> None:
    from gateway.app import create_app
    from gateway.errors import _STATUS_CODES
    from gateway.uploads import REFUSAL_CODES

    text = (DOCS / "api.md").read_text()
    for path in create_app().openapi()["paths"]:
        documented = re.sub(r"\{\w+\}", "{id}", path)
        assert documented in text, f"docs/api.md does not name {path}"
    raised = {"unauthorized", "job_not_found", "batch_not_found", "not_ready", "internal_error"}
    framework = {_STATUS_CODES[s] for s in (404, 405, 413, 422)}
    for code in {*REFUSAL_CODES, *raised, *framework}:
        assert f"`{code}`" in text, f"docs/api.md does not name the error code {code}"
