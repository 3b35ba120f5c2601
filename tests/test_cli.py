"""`python -m cl_engine run`, as a user runs it: progress on stderr, table on stdout, JSON report."""
import json
import subprocess
import sys

import pytest

from cl_engine.__main__ import main
from cl_engine.metrics import METRIC_KEYS
from cli_helpers import one_line_error


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


# -- ordinary mistakes: one line naming what is wrong and what was expected, exit 2, before any training --------

def _bad_npz(tmp_path):
    import numpy as np

    f32, i64 = np.float32, np.int64
    np.savez(tmp_path / "empty-bucket.npz",
             train_x_0=np.zeros((5, 4), f32), train_y_0=np.zeros(5, i64), test_x_0=np.zeros((3, 4), f32),
             test_y_0=np.zeros(3, i64), train_x_1=np.zeros((0, 4), f32), train_y_1=np.zeros(0, i64),
             test_x_1=np.zeros((3, 4), f32), test_y_1=np.zeros(3, i64))
    (tmp_path / "text.npz").write_text("not an archive\n")


@pytest.mark.parametrize("args,words", [
    (["--report", "{tmp}"], "is a folder; expected the path of the JSON file"),
    (["--device", "cuda:99"], "'cuda:99' asked for"),  # no GPU here, or not 100 of them
    (["--device", "tpu"], "device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["--buckets", "0"], "--buckets must be at least 1, got 0"),
    (["--threads", "0"], "--threads must be at least 1, got 0"),
    (["--lr", "-1"], "lr: Input should be greater than 0"),
    (["--dataset", "buckets-npz:{tmp}/empty-bucket.npz"], "bucket 1's train_x_1 has no samples; expected at least one"),
    (["--dataset", "buckets-npz:{tmp}/text.npz"], "text.npz is not an .npz archive (a zip of .npy arrays); expected"),
    (["--dataset", "mnist-rotated:{tmp}/text.npz"], "text.npz is not an .npz archive (a zip of .npy arrays); "
                                                   "expected mnist.npz"),
    (["--strategy", "replay", "--selection", "el2n"], "add --retain-ratio R (e.g. 0.05) or --retention per-bucket"),
], ids=["report-folder", "device-cuda", "device-tpu", "batch-size", "epochs", "buckets", "threads", "lr",
        "empty-bucket", "npz-not-a-zip", "mnist-not-a-zip", "selection"])
def test_ordinary_mistakes_are_one_line_and_exit_2(tmp_path, args, words):
    _bad_npz(tmp_path)
    line = one_line_error(["-m", "cl_engine", "run", *[a.format(tmp=tmp_path) for a in args]])
    assert line.startswith("error: ") and words in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty-bucket.npz", "text.npz"]  # nothing written


def test_the_help_shows_the_defaults():
    done = subprocess.run([sys.executable, "-m", "cl_engine", "run", "--help"], capture_output=True, text=True,
                          timeout=120)
    text = " ".join(done.stdout.split())  # argparse wraps lines
    for words in ("SGD learning rate (default: 0.1)", "SGD momentum (default: 0.0)", "default: 1000 for reservoir retention, unbounded for ratio",
                  "samples per training step (default: 10)",
                  "--device DEVICE auto, cpu, cuda or cuda:N (default: auto)"):
        assert words in text, words
