"""Shared by the monitoring tests: where the shipped files are, the Prometheus tools, and the PromQL
that the dashboard and the rules contain."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "docker-compose.yml"
PROMETHEUS_CONFIG = DOCKER / "prometheus" / "prometheus.yml"
RULES_DIR = DOCKER / "prometheus" / "rules"
RULE_TESTS_DIR = DOCKER / "prometheus" / "tests"
GRAFANA = DOCKER / "grafana"
DATASOURCES_DIR = GRAFANA / "provisioning" / "datasources"
DASHBOARD_PROVIDERS_DIR = GRAFANA / "provisioning" / "dashboards"
DASHBOARDS_DIR = GRAFANA / "dashboards"
DASHBOARD = DASHBOARDS_DIR / "clstream.json"

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
LOCAL_TOOLS = ROOT / ".tools" / "prometheus" / "usr" / "bin"  # unpacked there by `make test`
INSTALL_HINT = ("`make test` unpacks Debian's `prometheus` package (promtool, prometheus) into .tools/ where "
                "apt-get exists; elsewhere put both on PATH")


def prometheus_tool(name: str) -> str:
    """Path of `promtool` or `prometheus`. Missing: a failure in CI (CI=true), a reported skip elsewhere."""
    local = LOCAL_TOOLS / name
    path = str(local) if local.is_file() else shutil.which(name)
    if path is None:
        message = f"`{name}` is not installed: {INSTALL_HINT}"
        if IN_CI:
            pytest.fail(message + " (CI=true: the monitoring tests must run, not skip)")
        pytest.skip(message)
    return path


def rule_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*.yml"))


def load_yaml(path: Path):
    import yaml

    return yaml.safe_load(path.read_text())


def rules() -> list[dict]:
    """Every rule of every shipped rule file, each with its group name under `group`."""
    found = []
    for path in rule_files():
        for group in load_yaml(path)["groups"]:
            for rule in group["rules"]:
                found.append({**rule, "group": group["name"]})
    return found


# Every metric the server and the replicas export has a dashboard panel, except these, each with the
# reason it needs none (docs/monitoring.md lists the same, "Not on the dashboard").
NOT_ON_DASHBOARD = {
    "clstream_initial_accuracy_ratio": "the accuracy matrix's row before any training: the GEM metrics' FWT",
    "clstream_eval_sets": "the held-out sets registered: the accuracy matrix's columns",
    "clstream_streams": "streams with an applied sequence: GetStatus lists them",
    "clstream_snapshots": "serving snapshots this process published: the Model version stat's serving version",
    "clstream_buffer_samples": "the memory's size: the sum of the Buffer by bucket bands",
    "clstream_buffer_class_bytes": "bytes by class: Buffer by class times the bytes per sample",
    "clstream_replica_updates": "versions a replica took: the Replica versions panel",
}
_SERIES_SUFFIX = re.compile(r"_(?:total|created|bucket|count|sum)$")


def metric_of(series_name: str) -> str:
    """The metric a series belongs to: `clstream_x_total`, `clstream_y_seconds_bucket` → `clstream_x`,
    `clstream_y_seconds` (as server/metrics.py names them)."""
    return _SERIES_SUFFIX.sub("", series_name)


def dashboard_metrics(dashboard: dict) -> set[str]:
    """The metrics the dashboard's expressions query."""
    return {metric_of(selector.split("{")[0]) for _, target in dashboard_targets(dashboard)
            for selector in selectors(target["expr"])}


def dashboard_panels(dashboard: dict) -> list[dict]:
    """All panels, those nested in collapsed rows included."""
    panels = []
    for panel in dashboard.get("panels", []):
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def dashboard_targets(dashboard: dict) -> list[tuple[dict, dict]]:
    """(panel, target) for every query of the dashboard."""
    return [(panel, target) for panel in dashboard_panels(dashboard) for target in panel.get("targets", [])]


GRAFANA_VARIABLE = re.compile(r"\$(__\w+|\{__\w+\}|\w+)")


def grafana_to_promql(expr: str, rate_interval: str) -> str:
    """A dashboard expression as Grafana sends it to Prometheus. Only `$__rate_interval` is used by
    the shipped dashboard; any other variable is an error here, so the tests learn about it."""
    out = expr.replace("${__rate_interval}", rate_interval).replace("$__rate_interval", rate_interval)
    leftover = GRAFANA_VARIABLE.findall(out)
    if leftover:
        raise AssertionError(f"unsupported Grafana variable(s) {leftover} in {expr!r}")
    return out


_TOKEN = re.compile(
    r'(?P<grouping>\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\))'
    r'|(?P<string>"(?:[^"\\]|\\.)*")'
    r'|(?P<range>\[[^\]]*\])'
    r'|(?P<name>[a-zA-Z_:][\w:]*)\s*(?P<matchers>\{[^}]*\})?(?P<call>\s*\()?'
    r'|(?P<bare>\{[^}]*\})')
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan",  # operators, and aggregations
            "sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "topk", "bottomk", "quantile",
            "count_values"}  # (whose grouping may stand between the name and its parenthesis)


def selectors(expr: str) -> list[str]:
    """The vector selectors of a PromQL expression, e.g. `rate(a{x="1"}[5m]) / b` → ['a{x="1"}', 'b'].
    A small tokenizer, enough for the expressions shipped here: function calls, grouping label
    lists, strings and range durations are not taken for metric names."""
    found = []
    for m in _TOKEN.finditer(expr):
        name = m.group("name")
        if name is None or m.group("call") or name.lower() in KEYWORDS:
            continue
        selector = name + (m.group("matchers") or "")
        if selector not in found:
            found.append(selector)
    return found


_FINAL_COMPARISON = re.compile(r"\s*(?:==|!=|>=|<=|>|<)\s*(?:bool\s+)?[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?\s*$",
                               re.IGNORECASE)
_SET_OPERATOR = re.compile(r"\b(?:and|or|unless)\b(?:\s+(?:on|ignoring)\s*\([^)]*\))?", re.IGNORECASE)


def _without_outer_parentheses(expr: str) -> str:
    expr = expr.strip()
    while expr.startswith("(") and expr.endswith(")"):
        depth = 0
        for i, c in enumerate(expr):
            depth += {"(": 1, ")": -1}.get(c, 0)
            if depth == 0 and i < len(expr) - 1:
                return expr  # the first parenthesis closes early: `(a) / (b)`
        expr = expr[1:-1].strip()
    return expr


def expr_without_threshold(expr: str) -> str:
    """The quantity an alert condition compares: its final comparison with a number removed,
    e.g. `sum(rate(a[5m])) / sum(rate(b[5m])) > 0.05` → `sum(rate(a[5m])) / sum(rate(b[5m]))`.
    Unchanged when it does not end in one."""
    return _without_outer_parentheses(_FINAL_COMPARISON.sub("", _without_outer_parentheses(expr)))


def alert_quantities(expr: str) -> list[str]:
    """Every quantity an alert expression thresholds: the expression split at its top-level `and`,
    `or` and `unless` (with their `on (...)`/`ignoring (...)`), each part through
    `expr_without_threshold`. `(a > 0) and on (job) (increase(b[5m]) == 0)` → `a`, `increase(b[5m])`.
    A quantity that returns no data makes its alert unable to fire, whatever happens; the rule
    would still be valid and its series present, so the other checks would not notice."""
    parts, start = [], 0
    for m in _SET_OPERATOR.finditer(expr):
        head = expr[:m.start()]
        if head.count("(") == head.count(")"):  # top level (the shipped rules have no parenthesis in strings)
            parts.append(expr[start:m.start()])
            start = m.end()
    parts.append(expr[start:])
    return [expr_without_threshold(p) for p in parts]
