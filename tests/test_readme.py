"""README.md as a newcomer reads it: its demo output, figure caption and in-process command are the
code's (written by `make readme`, tests/tools/readme_demo.py), and every link in it resolves."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "tools"))
import readme_demo  # noqa: E402

README = (ROOT / "README.md").read_text()
MATRIX_AND_METRICS = re.compile(r"accuracy matrix \(%\).*?\nmetrics \(%\): [^\n]*", re.DOTALL)


def unindented(block: str) -> str:
    return "\n".join(line[4:] for line in block.rstrip("\n").split("\n"))


def test_the_demo_matrix_and_metrics_are_what_the_in_process_command_prints_now():
    """The generated block is not stale: the README's own in-process command, run now, prints the same
    matrix and metrics to the last digit (the service matches the in-process run: test_client_replay)."""
    command = unindented(readme_demo.block(README, "demo-inprocess"))
    assert command == readme_demo.inprocess_command(), "the in-process command is not the Makefile's DEMO_FLAGS"
    argv = shlex.split(command)
    assert argv[0] == ".venv/bin/python"
    done = subprocess.run([sys.executable, *argv[1:], "--quiet"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    printed = MATRIX_AND_METRICS.search(done.stdout)
    documented = MATRIX_AND_METRICS.search(unindented(readme_demo.block(README, "demo-output")))
    assert printed and documented
    assert documented.group(0) == printed.group(0), "README.md's demo output is stale: run `make readme`"


def test_the_caption_figures_are_those_of_the_printed_run():
    output = unindented(readme_demo.block(README, "demo-output"))
    rows = re.findall(r"^  \d+\s+([\d. ]+)$", output, re.MULTILINE)
    matrix = [[float(v) / 100 for v in row.split()] for row in rows]
    lag = re.search(r"trailing the data sent by (\d+) batches", output).group(1)
    caption = readme_demo.block(README, "demo-caption")
    assert readme_demo.caption_range(matrix) in caption
    assert readme_demo.caption_lag(float(lag)) in caption
    assert "out/demo/report.json" in output, "the block is `make demo`'s output, paths included"


def markdown_files() -> list[Path]:
    return [ROOT / name for name in ("README.md", "RELIABILITY.md", "BENCHMARKS.md")] + sorted(
        (ROOT / "docs").glob("*.md")) + [ROOT / "benchmarks" / "README.md"]


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    if not page.exists():
        pytest.fail(f"{page} is listed but missing")
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://|mailto:|#", target):
            continue
        if not (page.parent / target.split("#")[0]).exists():
            broken.append(target)
    assert not broken, f"{page.name} links to files that do not exist: {broken}"


def test_the_results_table_is_the_one_the_recorded_runs_give():
    """docs/engine.md's results table is benchmarks/strategies.py's rendering of its recorded JSON."""
    import json

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import strategies

    recorded = json.loads((ROOT / "benchmarks" / "results" / "strategies.json").read_text())
    table = strategies.markdown(recorded["results"], recorded["seeds"])
    page = (ROOT / "docs" / "engine.md").read_text()
    assert readme_demo.block(page, "results") == table, ("docs/engine.md's results table is not the recorded "
                                                          "runs': run `benchmarks/strategies.py --render --readme`")
