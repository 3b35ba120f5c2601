"""The shipped Prometheus config and alert rules, checked by promtool itself; each alert's unit tests
fire on a synthetic series and stay quiet on a healthy one."""
from __future__ import annotations

import subprocess

from monitoring_support import PROMETHEUS_CONFIG, RULE_TESTS_DIR, load_yaml, rule_files, rules


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120)


def test_promtool_check_config(promtool):
    done = run(promtool, "check", "config", str(PROMETHEUS_CONFIG))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_promtool_check_rules(promtool):
    files = rule_files()
    assert files, "no rule files shipped"
    done = run(promtool, "check", "rules", *map(str, files))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout + done.stderr


def test_promtool_test_rules(promtool):
    tests = sorted(RULE_TESTS_DIR.glob("*.yml"))
    assert tests, "no promtool rule unit tests shipped"
    done = run(promtool, "test", "rules", *map(str, tests))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAILED" not in done.stdout + done.stderr


def test_the_config_loads_every_rule_file():
    config = load_yaml(PROMETHEUS_CONFIG)
    loaded = {(PROMETHEUS_CONFIG.parent / f).resolve() for f in config["rule_files"]}
    assert {f.resolve() for f in rule_files()} <= loaded


def test_every_alert_is_unit_tested_firing_and_quiet():
    """promtool passing proves nothing about an alert no test mentions: each alert needs a case that
    expects it to fire and a case that expects silence."""
    firing, quiet = set(), set()
    for path in RULE_TESTS_DIR.glob("*.yml"):
        for case in load_yaml(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {r["alert"] for r in rules() if "alert" in r}
    assert alerts - firing == set(), "alerts never shown firing"
    assert alerts - quiet == set(), "alerts never shown quiet"


def test_the_alerts_the_issue_asks_for_exist():
    by_name = {r["alert"]: r for r in rules() if "alert" in r}
    assert "clstream_forgetting_ratio" in by_name["CLStreamForgetting"]["expr"]
    assert "clstream_drift_events_total" in by_name["CLStreamDriftDetected"]["expr"]
    assert "clstream_samples_trained_total" in by_name["CLStreamTrainingStalled"]["expr"]
    assert "clstream_predict_requests_total" in by_name["CLStreamPredictErrors"]["expr"]
    assert "clstream_gem_qp_fallbacks_total" in by_name["CLStreamQPFallbacksRising"]["expr"]
    assert "clstream_calls_refused_total" in by_name["CLStreamCallsRefused"]["expr"]
    assert "budget" in by_name["CLStreamCallsRefused"]["expr"]  # labelled with the budget that refused
    assert {"clstream_calls_open", "clstream_calls_limit"} <= set(
        by_name["CLStreamCallBudgetNearFull"]["expr"].replace("/", " ").split())
    for rule in by_name.values():
        assert rule["labels"]["severity"] in ("info", "warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
