"""`python -m cl_engine run`, as a user runs it: progress on stderr, table on stdout, JSON report."""
import json
import subprocess
import sys

import pytest

from cl_engine.__main__ import main
from cl_engine.metrics import METRIC_KEYS


def run_cli(capsys, *args):
    code = main(["run", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_python_m_cl_engine_is_the_entry_point():
    done = subprocess.run([sys.executable, "-m", "cl_engine", "run", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "--memory-strength" in done.stdout


@pytest.mark.parametrize("strategy,extra", [
    ("gem", ["--memory-per-bucket", "50"]),
    ("replay", ["--retain-ratio", "0.05", "--selection", "margin", "--epochs", "2"]),
])
def test_run_writes_the_report(tmp_path, capsys, strategy, extra):
    report = tmp_path / "out.json"
    code, stdout, stderr = run_cli(capsys, "--dataset", "digits-rotated", "--strategy", strategy, "--model", "mlp", "--lr", "0.1",
                   "--batch-size", "10", "--buckets", "3", "--report", str(report), *extra)
    assert code == 0, stderr
    assert "bucket 3/3 done" in stderr  # progress
    assert "accuracy matrix" in stdout and "acc=" in stdout
    data = json.loads(report.read_text())
    for key in ("stream", "strategy", "config", "accuracy_matrix", "initial_accuracy", "metrics",
                "samples_trained", "train_seconds"):
        assert key in data
    assert data["strategy"] == strategy
    R = data["accuracy_matrix"]
    assert len(R) == 3 and all(len(row) == 3 and all(0 <= a <= 1 for a in row) for row in R)
    assert len(data["initial_accuracy"]) == 3
    assert set(METRIC_KEYS) <= set(data["metrics"]) and all(data["metrics"][k] is not None for k in METRIC_KEYS)
    epochs = 2 if "--epochs" in extra else 1
    assert data["samples_trained"] == epochs * sum(data["stream"]["train_sizes"])
    assert data["train_seconds"] > 0


def test_bad_options_get_a_clear_error_and_exit_2(capsys):
    code, _, stderr = run_cli(capsys, "--strategy", "replay", "--selection", "el2n")
    assert code == 2 and "selection 'el2n' needs ratio or per-bucket retention" in stderr
    code, _, stderr = run_cli(capsys, "--dataset", "buckets-npz:/nonexistent.npz")
    assert code == 2 and "no file at /nonexistent.npz" in stderr
