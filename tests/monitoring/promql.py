"""Every PromQL expression the stack ships: the dashboards' queries and the alert rules'."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = ROOT / "compose" / "grafana" / "dashboards"
PROMETHEUS_DIR = ROOT / "compose" / "prometheus"
RULES_DIR = PROMETHEUS_DIR / "rules"
RULE_TESTS_DIR = PROMETHEUS_DIR / "tests"

# An alert reads `<value> <comparison> <threshold>` (the rule files' convention).
ALERT_FORM = re.compile(
    r"^(?P<value>.+?)\s+(?P<op>>=|<=|==|!=|>|<)\s+(?P<threshold>-?[\d.]+)$", re.S
)
# A series selector: one of our metric names (or `up`), with its label matchers if any.
SELECTOR = re.compile(
    r'\b(?P<name>eldefect_\w+|up)\b(?!\s*\()(?P<matchers>\{(?:[^}"]|"(?:[^"\\]|\\.)*")*\})?'
)


@dataclass(frozen=True)
class Expression:
    where: str  # "eldefect.json: Queue depth/A" or "service.yml: EldefectNoWorker"
    expr: str
    alert: bool


def dashboard_expressions(rate_window: str) -> list[Expression]:
    found = []
    for path in sorted(DASHBOARD_DIR.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"].replace("$__rate_interval", rate_window)
                found.append(
                    Expression(f"{path.name}: {panel['title']}/{target['refId']}", expr, False)
                )
    return found


def rules() -> list[tuple[str, dict[str, object]]]:
    return [
        (path.name, rule)
        for path in sorted(RULES_DIR.glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def rule_expressions() -> list[Expression]:
    return [
        Expression(
            f"{file}: {rule.get('alert') or rule.get('record')}",
            str(rule["expr"]).strip(),
            "alert" in rule,
        )
        for file, rule in rules()
    ]


def value_query(expression: Expression) -> str:
    """What to run so a healthy system answers with series: an alert's comparison with `bool`
    (0 or 1 for every series instead of only the ones that fire)."""
    if not expression.alert:
        return expression.expr
    match = ALERT_FORM.match(expression.expr)
    assert match, f"{expression.where}: not `<value> <comparison> <threshold>`: {expression.expr}"
    return f"{match['value']} {match['op']} bool {match['threshold']}"


def selectors(expr: str) -> list[str]:
    """The series selectors in an expression (our metric names and `up`, with matchers)."""
    return [m["name"] + (m["matchers"] or "") for m in SELECTOR.finditer(expr)]
