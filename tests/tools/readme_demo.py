"""Rewrite README.md's generated demo parts from a real `make demo` run: the printed output, the
figure client/assets/demo_accuracy_over_time.png and its caption's figures, and the in-process
command that reproduces the demo's matrix. Run it with `make readme`; tests/test_readme.py fails
when the README no longer matches what the code prints.

Each generated part sits between `<!-- NAME:start -->` and `<!-- NAME:end -->` in README.md.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
FIGURE = ROOT / "client" / "assets" / "demo_accuracy_over_time.png"


def demo_flags() -> list[str]:
    """The demo's flags, from the Makefile's DEMO_FLAGS (the one place they are written)."""
    m = re.search(r"^DEMO_FLAGS := (.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert m, "Makefile has no DEMO_FLAGS line"
    return shlex.split(m.group(1))


def inprocess_command() -> str:
    """The in-process run of the demo's learner and batches: one torch thread, as the demo's server."""
    return shlex.join([".venv/bin/python", "-m", "cl_engine", "run", *demo_flags(), "--threads", "1"])


def caption_range(matrix: list[list[float]]) -> str:
    """How well replay keeps the earlier buckets at the end: the last row's range over them, in %."""
    kept = [100 * v for v in matrix[-1][:-1]]
    return f"{min(kept):.0f}–{max(kept):.0f}%"


def caption_lag(mean_lag_batches: float) -> str:
    return f"~{mean_lag_batches:.0f} batches behind"


def block(text: str, name: str) -> str:
    m = re.search(rf"<!-- {name}:start -->\n(.*?)<!-- {name}:end -->", text, re.DOTALL)
    assert m, f"README.md has no generated block {name!r}"
    return m.group(1)


def replace_block(text: str, name: str, body: str) -> str:
    block(text, name)
    return re.sub(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", lambda m: m.group(1) + body + m.group(2),
                  text, flags=re.DOTALL)


def indented(lines: list[str]) -> str:
    return "".join(f"    {line}\n" if line else "\n" for line in lines)


def main() -> int:
    out = ROOT / "out" / "demo"  # where `make demo` writes, so the printed paths are the same
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "client", "demo", *demo_flags(), "--report", str(out.relative_to(ROOT))]
    print("running", shlex.join(command), file=sys.stderr)
    printed = subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True).stdout
    report = json.loads((out / "report.json").read_text())
    text = README.read_text()
    text = replace_block(text, "demo-output", indented(printed.rstrip("\n").split("\n")))
    text = replace_block(text, "demo-inprocess", indented([inprocess_command()]))
    caption = block(text, "demo-caption")
    caption = re.sub(r"\d+–\d+%", caption_range(report["accuracy_matrix"]), caption)
    caption = re.sub(r"~\d+ batches behind", caption_lag(report["served"]["mean_lag_batches"]), caption)
    text = replace_block(text, "demo-caption", caption)
    README.write_text(text)
    shutil.copyfile(out / "accuracy_over_time.png", FIGURE)
    print(f"rewrote README.md's demo blocks and {FIGURE.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
