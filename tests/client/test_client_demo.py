"""The main job end to end: `clstream-client demo` starts the real server as a process, streams a
user's own .npz stream with GEM, prints the matrix, the metrics and the live /metrics address,
writes the report and its figures, and stops the server cleanly."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from client.cli import main


def write_npz(path, buckets=3, train=120, test=60):
    """A small stream of real digits: bucket t is a different slice, turned by t quarter turns."""
    data = load_digits()
    x = (data.images * (255 / 16)).astype(np.uint8)
    y = data.target.astype(np.int64)
    arrays, start = {}, 0
    for t in range(buckets):
        xs = np.rot90(x[start: start + train + test], k=t, axes=(1, 2))
        ys = y[start: start + train + test]
        arrays.update({f"train_x_{t}": xs[:train], f"train_y_{t}": ys[:train],
                       f"test_x_{t}": xs[train:], f"test_y_{t}": ys[train:]})
        start += train + test
    np.savez(path, **arrays)
    return path


def test_demo_with_a_users_npz_stream_and_gem(tmp_path, capsys):
    data = write_npz(tmp_path / "my.npz")
    out = tmp_path / "demo"
    code = main(["demo", "--dataset", f"buckets-npz:{data}", "--strategy", "gem", "--memory-per-bucket", "20",
                 "--query-every", "3", "--report", str(out), "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "live Prometheus metrics at http://127.0.0.1:" in printed
    assert "accuracy matrix (%)" in printed and "acc=" in printed and "served" in printed
    assert "server stopped cleanly" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["strategy"] == "gem" and report["config"]["memory_per_bucket"] == 20
    assert report["config"]["dataset"] == f"buckets-npz:{data}"
    assert np.array(report["accuracy_matrix"], dtype=float).shape == (3, 3)
    assert report["samples_trained"] == 3 * 120 and report["served"]["queries"] == 12
    assert report["buffer"]["by_bucket"] == {"0": 20, "1": 20, "2": 20}  # GEM's episodic memory, per bucket
    for name in report["figures"]:
        with Image.open(out / name) as image:
            image.verify()
    assert "stopped cleanly" in (out / "server.log").read_text()
