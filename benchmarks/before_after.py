"""A change's cost on the happy path: service_overhead.py from two checkouts, alternated, side by side.

    .venv/bin/python benchmarks/before_after.py --before ../old-checkout [--rounds 3] [--label durability]

`--before` is a checkout of the commit to compare with (e.g. `git worktree add ../old 40e7941`); the
after side is this checkout. Each round runs `benchmarks/service_overhead.py --reps 1 --no-profile`
once from each checkout (the order alternates), same seeds, same venv; each script imports its own
checkout's code, the server child too. Per batch size and variant it reports the medians of samples/s
and of the server's CPU seconds per batch (all its threads and processes) and their after/before
ratios, paired by round. Writes benchmarks/results/before_after_LABEL.json and the
`before_after_LABEL` section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from benchmarks.common import command_line, machine, machine_line, median, write_markdown, write_results  # noqa: E402


def one_round(checkout: Path, seed: int, batch_sizes: list[int], out: Path) -> list[dict]:
    cmd = [sys.executable, str(checkout / "benchmarks" / "service_overhead.py"), "--reps", "1", "--no-profile",
           "--seed", str(seed), "--batch-sizes", *map(str, batch_sizes), "--out", str(out), "--markdown", "-"]
    subprocess.run(cmd, check=True, cwd=checkout, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())["runs"]


def summarise(rounds: list[dict]) -> list[dict]:
    """Per (batch, variant): medians of each side and of the paired after/before ratios."""
    cells = defaultdict(lambda: defaultdict(list))
    for r in rounds:
        pairs = {side: {(x["batch_size"], x["variant"]): x for x in r[side]} for side in ("before", "after")}
        for key, a in pairs["after"].items():
            b = pairs["before"].get(key)
            if b is None or key[1] == "inproc":
                continue
            c = cells[key]
            for side, x in (("before", b), ("after", a)):
                c[f"{side}_sps"].append(x["samples_per_second"])
                c[f"{side}_cpu_us"].append(1e6 * x["server_cpu_seconds"] / x["batches"])
            c["sps_ratio"].append(a["samples_per_second"] / b["samples_per_second"])
            c["cpu_ratio"].append((a["server_cpu_seconds"] / a["batches"]) / (b["server_cpu_seconds"] / b["batches"]))
    return [{"batch_size": bs, "variant": v, **{k: median(xs) for k, xs in c.items()}, "n": len(c["sps_ratio"])}
            for (bs, v), c in sorted(cells.items())]


def publish(out: dict, label: str, markdown: Path | None) -> None:
    write_results(out, ROOT / "benchmarks" / "results" / f"before_after_{label}.json")
    for row in out["summary"]:
        print(f"batch {row['batch_size']:3d} {row['variant']:15s} samples/s {row['before_sps']:7.0f} → "
              f"{row['after_sps']:7.0f} (×{row['sps_ratio']:.3f}); server CPU/batch {row['before_cpu_us']:6.0f} → "
              f"{row['after_cpu_us']:6.0f} µs (×{row['cpu_ratio']:.3f})")
    if markdown is None:
        return
    rows = ["| batch | variant | samples/s before | after | after / before | server CPU per batch before | after | "
            "after / before |", "|---|---|---|---|---|---|---|---|"]
    rows += [f"| {r['batch_size']} | {r['variant']} | {r['before_sps']:.0f} | {r['after_sps']:.0f} | "
             f"**{r['sps_ratio']:.2f}** | {r['before_cpu_us']:.0f} µs | {r['after_cpu_us']:.0f} µs | "
             f"**{r['cpu_ratio']:.2f}** |" for r in out["summary"]]
    body = "\n".join([
        f"### Before / after: {out['label']} (`benchmarks/before_after.py`)", "",
        f"Machine: {machine_line(out['machine'], out['loads'])}", "",
        f"Command: `{out['command']}` ({out['wall_seconds'] / 60:.1f} min); before = `{out['before_commit']}`, "
        f"after = `{out['after_commit']}`", "",
        "The happy path of `service_overhead.py` (digits-rotated, MLP, replay, one pass; a fresh server per run, "
        "16 batches in flight) from both checkouts, alternated round by round; medians over "
        f"{out['rounds_run']} rounds, ratios paired by round. Server CPU = all threads and processes of the "
        "server during the Train streams.", "",
        *rows])
    write_markdown(markdown, body, f"before_after_{label}")


def commit_of(checkout: Path) -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=checkout, capture_output=True,
                          text=True).stdout.strip() or "unknown"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", type=Path, required=True, help="checkout of the commit to compare with")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[10, 64])
    p.add_argument("--label", default="change", help="names the JSON file and the BENCHMARKS.md section")
    p.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md", help="'-' for none")
    args = p.parse_args(argv)
    before = args.before.resolve()
    if not (before / "benchmarks" / "service_overhead.py").is_file():
        p.error(f"--before {args.before} has no benchmarks/service_overhead.py; expected a checkout of clstream")
    t0, rounds, loads = time.perf_counter(), [], []
    with tempfile.TemporaryDirectory(prefix="clstream-ab-") as tmp:
        for k in range(args.rounds):
            r = {}
            order = [("before", before), ("after", ROOT)] if k % 2 == 0 else [("after", ROOT), ("before", before)]
            for side, checkout in order:
                loads.append(os.getloadavg()[0])
                r[side] = one_round(checkout, k, args.batch_sizes, Path(tmp) / f"{side}-{k}.json")
                print(f"round {k + 1}/{args.rounds}: {side} done", file=sys.stderr)
            rounds.append(r)
    out = {"study": "happy-path cost of a change: service_overhead.py before and after", "label": args.label,
           "command": command_line(argv), "machine": machine(), "loads": loads, "before_commit": commit_of(before),
           "after_commit": commit_of(ROOT), "rounds_run": len(rounds), "rounds": rounds,
           "summary": summarise(rounds), "wall_seconds": time.perf_counter() - t0}
    publish(out, args.label, None if str(args.markdown) == "-" else args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
