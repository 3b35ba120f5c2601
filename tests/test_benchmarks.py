"""The benchmark scripts' scaffolding (benchmarks/common.py), through the scripts themselves: no study runs
here (speed is never measured in tests), but every study that records its results re-renders, from its
recorded JSON, exactly the section BENCHMARKS.md holds (`script.py render RESULTS.json`, as
benchmarks/README.md says), and every script answers --help without running."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if p.name != "common.py")
# a study recorded under its script's name, and the variants recorded under their own (--out, --section)
VARIANTS = {"conv_images": ("conv_images_bf16", "conv_images_full", "conv_images_full_bf16", "conv_images_full_b10",
                             "conv_images_clear", "conv_images_clear_bf16", "conv_images_clear_resnet18", "conv_images_resnet18",
                             "conv_images_resnet18_gem", "conv_images_resnet18_bf16", "conv_images_resnet18_gem_bf16"),
            "update_guard": ("update_guard_conv",)}
RENDERED = [(p, BENCHMARKS / "results" / f"{name}.json") for p in SCRIPTS if "entry_point(" in p.read_text()
            for name in (p.stem, *VARIANTS.get(p.stem, ())) if (BENCHMARKS / "results" / f"{name}.json").exists()]


def section(text: str, name: str) -> str | None:
    m = re.search(rf"<!-- {re.escape(name)}:begin -->\n(.*?)\n<!-- {re.escape(name)}:end -->", text, re.DOTALL)
    return m.group(1) if m else None


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_the_studies_that_render_are_found():
    assert {r.stem for _, r in RENDERED} >= {"broker", "replicas", "serving_latency", "service_overhead", "gem_scaling",
                                             "scale", "update_guard", *(v for vs in VARIANTS.values() for v in vs)}


@pytest.mark.parametrize("script, recorded", RENDERED, ids=[r.stem for _, r in RENDERED])
def test_a_recorded_study_renders_its_benchmarks_section_again(script, recorded, tmp_path):
    results = tmp_path / "results.json"  # render rewrites the results file: a copy
    results.write_bytes(recorded.read_bytes())
    markdown = tmp_path / "BENCHMARKS.md"
    done = run(str(script), "render", str(results), "--markdown", str(markdown))
    assert done.returncode == 0, done.stderr[-2000:]
    names = re.findall(r"<!-- (\S+):begin -->", markdown.read_text())
    assert len(names) == 1, names
    recorded = section((ROOT / "BENCHMARKS.md").read_text(), names[0])
    assert recorded is not None, f"BENCHMARKS.md has no {names[0]} section"
    assert section(markdown.read_text(), names[0]) == recorded


HELP_ALL = """
import contextlib, io, json, runpy, sys
answers = {}
for path in sys.argv[1:]:
    out, err = io.StringIO(), io.StringIO()
    sys.argv = [path, "--help"]
    code = "returned"
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(path, run_name="__main__")
        except SystemExit as e:
            code = e.code
    answers[path] = {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}
print(json.dumps(answers))
"""


def test_every_script_answers_help_without_running():
    """In one interpreter (torch imported once): each script's --help exits 0 with its usage, and none
    runs its study instead (engine_hotspots used to, rewriting its results)."""
    import json

    done = run("-c", HELP_ALL, *map(str, SCRIPTS), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    answers = json.loads(done.stdout.splitlines()[-1])
    for path, answer in answers.items():
        assert answer["code"] in (0, None), (path, answer["code"], answer["stderr"][-500:])
        assert answer["stdout"].startswith("usage: ") and "wrote " not in answer["stderr"], path
    assert len(answers) == len(SCRIPTS)
