"""The results table of docs/engine.md: every strategy on the embedded streams, mean ± std over seeds.

    .venv/bin/python benchmarks/strategies.py [--seeds 3] [--datasets digits-rotated digits-permuted] [--readme]
    .venv/bin/python benchmarks/strategies.py --render --readme   # the table again from the JSON, no runs

Every memory-based strategy gets the same budget: 50 samples per bucket, 250 in all. Each bucket is
shuffled (`within="shuffled"`, run_stream's default), one pass. Writes
benchmarks/results/strategies.json; with --readme, rewrites the table in docs/engine.md between its
results markers, so the docs show what this code measured.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "proto")]  # this checkout, whatever the venv has installed

from cl_engine import LearnerConfig, build_stream, run_stream  # noqa: E402
from cl_engine.report import jsonable  # noqa: E402
MEMORY = {"buffer_capacity": 250, "memory_per_bucket": 50}
RUNS = {
    "naive (fine-tune)": ("time", dict(strategy="naive")),
    "replay, reservoir 250, online": ("time", dict(strategy="replay", retention="reservoir", **MEMORY)),
    "replay, reservoir 250, written at bucket ends (default)": ("time", dict(strategy="replay", **MEMORY)),
    "replay, 50/bucket at random": ("time", dict(strategy="replay", retention="per-bucket", **MEMORY)),
    "replay, 50/bucket by EL2N": ("time", dict(strategy="replay", retention="per-bucket", selection="el2n", **MEMORY)),
    "replay, 50/bucket by margin": ("time", dict(strategy="replay", retention="per-bucket", selection="margin",
                                                 **MEMORY)),
    "GEM, 50/bucket": ("time", dict(strategy="gem", **MEMORY)),
    "A-GEM, 50/bucket": ("time", dict(strategy="agem", **MEMORY)),
    "iid reference (naive, shuffled)": ("iid", dict(strategy="naive")),
}
SHOWN = ("acc", "bwt", "fwt", "forgetting", "clear_score")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--datasets", nargs="+", default=["digits-rotated", "digits-permuted"])
    p.add_argument("--readme", action="store_true", help="rewrite the results table in docs/engine.md")
    p.add_argument("--render", action="store_true", help="no runs: the table from benchmarks/results/strategies.json")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="the learner's precision; other than fp32 writes strategies_<precision>.json, never the docs")
    p.add_argument("--only", nargs="+", default=None, help="only the runs whose label contains one of these words")
    args = p.parse_args()
    suffix = "" if args.precision == "fp32" else f"_{args.precision}"
    path = ROOT / "benchmarks" / "results" / f"strategies{suffix}.json"
    if suffix and args.readme:
        p.error("--readme shows the fp32 results; leave it out with --precision")
    if args.render:
        saved = json.loads(path.read_text())
        return publish(saved["results"], saved["seeds"], args.readme)

    results = []
    for dataset in args.datasets:
        streams = {order: build_stream(dataset, order=order) for order in ("time", "iid")}
        for label, (order, options) in RUNS.items():
            if args.only and not any(word in label for word in args.only):
                continue
            runs = []
            for seed in range(args.seeds):
                config = LearnerConfig(lr=0.1, seed=seed, device="cpu", precision=args.precision, **options)
                report = run_stream(streams[order], config, batch_size=10, progress=False)
                runs.append({k: report["metrics"][k] for k in SHOWN} | {"train_seconds": report["train_seconds"]})
            summary = {k: (statistics.mean(r[k] for r in runs), statistics.stdev(r[k] for r in runs)
                           if len(runs) > 1 else 0.0) for k in (*SHOWN, "train_seconds")}
            results.append({"dataset": dataset, "run": label, "config": options, "order": order, "runs": runs,
                            "mean_std": summary})
            print(f"{dataset:16} {label:34} " + "  ".join(f"{k}={100 * summary[k][0]:6.2f}" for k in SHOWN),
                  file=sys.stderr)

    out = {"machine": {"cpus": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__},
           "seeds": args.seeds, "precision": args.precision, "settings": "MLP 2x100, SGD lr 0.1, batch 10, one pass",
           "results": results}
    path.write_text(json.dumps(jsonable(out), indent=2) + "\n")
    return publish(results, args.seeds, args.readme)


def publish(results: list[dict], seeds: int, readme: bool) -> int:
    table = markdown(results, seeds)
    print(table)
    if readme:
        readme = ROOT / "docs" / "engine.md"
        text = readme.read_text()
        new = re.sub(r"(<!-- results:start -->\n).*?(<!-- results:end -->)", lambda m: m.group(1) + table + m.group(2),
                     text, flags=re.S)
        if new == text and table not in text:
            raise SystemExit("docs/engine.md has no <!-- results:start --> / <!-- results:end --> markers")
        readme.write_text(new)
    return 0


def markdown(results: list[dict], seeds: int) -> str:
    lines = ["| stream | strategy | ACC % | BWT % | FWT % | forgetting % | CLEAR score % |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        ms = r["mean_std"]
        cells = [f"{100 * ms[k][0]:.1f} ± {100 * ms[k][1]:.1f}" for k in SHOWN]
        lines.append(f"| {r['dataset']} | {r['run']} | " + " | ".join(cells) + " |")
    lines.append(f"\nMean ± standard deviation over {seeds} seeds; MLP 2×100, SGD lr 0.1, batch 10, one pass "
                 "over each bucket, shuffled within the bucket (the default); memory 50 samples per bucket (250 in "
                 "all). "
                 "From `benchmarks/results/strategies.json` (which also holds each run's training time; "
                 "speed is compared in BENCHMARKS.md, where runs are timed side by side).\n")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
