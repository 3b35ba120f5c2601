"""The GPU session's script, benchmarks/device_check.sh, in its CPU smoke test (`--device cpu --tiny`), so
that it cannot rot between the sessions that have a GPU: every stage runs (fixture, decode, floor, engine,
a real server with the learner thread and with the learner process) and the JSON says what it measured."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "device_check.sh"


def run(args: list[str], out: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLSTREAM_")}
    # the script's time box (3/4 of BENCH_SECONDS, 180 s by default, for the GPU) is stretched for this shared CPU:
    # under a load of 4-5 the tiny run spent 180 s before its bf16 rows
    env.update(OUT=str(out), PYTHON=sys.executable, BENCH_SECONDS="540")
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def test_the_tiny_cpu_run_measures_every_way_through_a_real_server(tmp_path):
    done = run(["--device", "cpu", "--tiny", "--workers", "2", "--fixture", str(tmp_path / "clear")], tmp_path / "out")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "the CUDA-marked tests are left out" in done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["device_check.json", "device_check.log"]
    assert "measurement exit 0" in (tmp_path / "out" / "device_check.log").read_text()
    results = json.loads((tmp_path / "out" / "device_check.json").read_text())

    fp32 = {r["way"]: r for r in results["rows"] if r["precision"] == "fp32"}
    assert sorted(fp32) == ["engine", "floor", "service-process", "service-thread"]
    for row in fp32.values():
        assert row["strategy"] == "replay" and row["images"] == 11 and row["images_per_s"] > 0  # bucket 1 timed
    assert any(r["way"] == "floor" and r["precision"] == "amp-bf16" for r in results["rows"])
    assert set(results["ratios"]["replay fp32"]) >= {"engine/floor", "service-thread/engine", "service-process/engine"}
    assert results["ratios"]["replay fp32"]["engine/floor"] == fp32["engine"]["images_per_s"] / fp32["floor"]["images_per_s"]
    assert results["machine"]["cuda"] is torch.cuda.is_available() and results["tests"] is None
    assert results["decode"]["images"] == results["fixture"]["images"] == 2 * 11

    # the fixture is CLEAR's layout, of the sizes stated, and what the loader read
    filelist = (tmp_path / "clear" / "training_folder" / "filelists" / "1" / "all.txt").read_text().split("\n")
    first = tmp_path / "clear" / filelist[0].split()[0]
    with Image.open(first) as image:
        assert image.format == "JPEG" and list(image.size) in results["settings"]["sizes"]
    assert (tmp_path / "clear" / "class_names.txt").read_text().split()[0] == "BACKGROUND"


def test_asking_for_cuda_where_there_is_none_is_refused_in_one_line(tmp_path):
    if torch.cuda.is_available():  # on a GPU machine the refusal cannot happen: the real run is the check there
        return
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "device_check.py"), "--device", "cuda"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "torch.cuda.is_available() is False" in done.stderr
