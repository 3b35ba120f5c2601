"""Does the update-size guard change results on the normal streams? (issue 19)

    .venv/bin/python benchmarks/update_guard.py [--seeds 2] [--datasets digits-rotated digits-permuted]
    .venv/bin/python benchmarks/update_guard.py render benchmarks/results/update_guard.json

Every run of docs/engine.md's results table (benchmarks/strategies.py's RUNS, same settings), per seed,
three times: the update-size guard off (gradient_outlier_ratio 0, max_update_ratio 0), the default
(10 and 10), and gradient-norm clipping at 1.0 (about the median gradient norm of these streams) with
the update-size guard off. For each it records ACC, the largest difference of the accuracy matrix from the
unguarded run, and the steps the guard refused. Then, from a model trained on one bucket, one batch of
constant 1e4 (inside the default value range) under each: the held-out accuracy before and after.

Writes benchmarks/results/update_guard.json and rewrites the `update_guard` section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "proto")]  # this checkout, whatever the venv has installed

from benchmarks.common import command_line, entry_point, machine, machine_line, write_markdown, write_results  # noqa: E402
from benchmarks.strategies import RUNS  # noqa: E402
from cl_engine import LearnerConfig, build_stream, run_stream  # noqa: E402
from cl_engine.guard import OUTLIER_WARMUP, StepGuard  # noqa: E402
from cl_engine.learner import Learner  # noqa: E402
from cl_engine.schedule import bucket_batches  # noqa: E402

SECTION = "update_guard"
OFF = dict(gradient_outlier_ratio=0.0, max_update_ratio=0.0)
GUARDS = {"off": OFF,
          "default": dict(gradient_outlier_ratio=10.0, max_update_ratio=10.0),
          "clip 1.0": dict(OFF, clip_grad_norm=1.0)}


RATIOS: list[float] = []  # each checked step's gradient norm / the typical norm, while recording
UPDATES: list[float] = []  # each step's update bound / the weights' norm (at least 1)


def recording(outlier, too_large):
    """StepGuard's two checks, also noting how far each step is from their bars (changes nothing)."""
    def checked_outlier(self, g_norm):
        if self.outlier_ratio and self.norms_seen >= OUTLIER_WARMUP:
            RATIOS.append(g_norm / self.typical_norm)
        return outlier(self, g_norm)

    def checked_update(self, update, p_norm):
        if self.update_ratio:
            UPDATES.append(update / max(p_norm, 1.0))
        return too_large(self, update, p_norm)
    return checked_outlier, checked_update


def max_diff(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


def poison(dataset: str, seed: int, guard: dict) -> dict:
    """Held-out accuracy of a replay model trained on bucket 0 (3 passes), before and after one batch of
    10 samples of constant 1e4 with random labels."""
    stream = build_stream(dataset)
    bucket = stream.buckets[0]
    learner = Learner(LearnerConfig(lr=0.1, seed=seed, device="cpu", strategy="replay", **guard),
                      stream.input_shape, stream.num_classes)
    for epoch in range(3):
        for index in bucket_batches(len(bucket.train), 10, 1, seed + 100 * epoch, 0):
            learner.observe(*bucket.train.batch(index, train=True), 0)
    before = learner.evaluate(bucket.test)
    g = torch.Generator().manual_seed(seed)
    x = torch.full((10, *stream.input_shape), 1e4)
    y = torch.randint(0, stream.num_classes, (10,), generator=g)
    step = learner.observe(x, y, 0)
    return {"before": before, "after": learner.evaluate(bucket.test), "skipped": step.skipped}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--datasets", nargs="+", default=["digits-rotated", "digits-permuted"])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / f"{SECTION}.json")
    p.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md")
    args = p.parse_args()
    torch.set_num_threads(1)
    StepGuard._outlier, StepGuard._too_large = recording(StepGuard._outlier, StepGuard._too_large)
    t0 = time.perf_counter()
    rows = []
    for dataset in args.datasets:
        streams = {order: build_stream(dataset, order=order) for order in ("time", "iid")}
        for label, (order, options) in RUNS.items():
            runs = {name: [] for name in GUARDS}
            for seed in range(args.seeds):
                for name, guard in GUARDS.items():
                    RATIOS.clear()
                    UPDATES.clear()
                    config = LearnerConfig(lr=0.1, seed=seed, device="cpu", **options, **guard)
                    report = run_stream(streams[order], config, batch_size=10, progress=False)
                    runs[name].append({"acc": report["metrics"]["acc"], "matrix": report["accuracy_matrix"],
                                       "skipped_steps": report["skipped_steps"],
                                       "batches_trained": report["batches_trained"],
                                       "largest_norm_ratio": max(RATIOS, default=None),
                                       "largest_update_ratio": max(UPDATES, default=None)})
            row = {"dataset": dataset, "run": label, "runs": runs, "summary": {}}
            for name in GUARDS:
                row["summary"][name] = {
                    "acc_mean": statistics.mean(r["acc"] for r in runs[name]),
                    "max_matrix_diff_from_off": max(max_diff(r["matrix"], o["matrix"])
                                                    for r, o in zip(runs[name], runs["off"])),
                    "skipped": sum(sum(r["skipped_steps"].values()) for r in runs[name]),
                    **{k: max((r[k] for r in runs[name] if r[k] is not None), default=None)
                       for k in ("largest_norm_ratio", "largest_update_ratio")}}
            rows.append(row)
            print(f"{dataset:16} {label:46} " + "  ".join(
                f"{n}: acc {s['acc_mean']:.3f} diff {s['max_matrix_diff_from_off']:.3f} skipped {s['skipped']}"
                for n, s in row["summary"].items()), file=sys.stderr)
    attacks = [{"dataset": d, "seed": s, "guard": name, **poison(d, s, guard)}
               for d in args.datasets for s in range(args.seeds) for name, guard in GUARDS.items()]
    out = {"study": SECTION, "command": command_line(None), "machine": machine(), "seeds": args.seeds,
           "settings": "MLP 2x100, SGD lr 0.1, batch 10, one pass; memory 50 per bucket (250)",
           "guards": GUARDS, "results": rows, "poison": attacks, "wall_seconds": time.perf_counter() - t0}
    write_results(out, args.out)
    publish(out, args.out, args.markdown)
    return 0


def publish(out: dict, path: Path, markdown: Path) -> None:
    names = list(out["guards"])
    lines = [f"### Update-size guard on the normal streams (`benchmarks/update_guard.py`)", "",
             f"Machine: {machine_line(out['machine'])}.", "",
             f"Command: `{out['command']}` ({out['wall_seconds'] / 60:.0f} min)", "",
             "Every run of docs/engine.md's results table, " + f"{out['seeds']} seeds, under each guard: mean ACC, the "
             "largest difference of any accuracy-matrix entry from the unguarded run (same seed), steps refused; "
             "and, under the default, the largest ratio of a step's gradient norm to the typical norm that the "
             "guard saw (it refuses above 10) and the largest update bound as a fraction of the weights' norm "
             "(it refuses above 10).", "",
             "| stream | run | " + " | ".join(f"{n}: ACC % / max ΔR pt / skipped" for n in names)
             + " | largest norm / typical | largest update / weights |", "|---|---|" + "---|" * (len(names) + 2)]
    for r in out["results"]:
        cells = [f"{100 * s['acc_mean']:.1f} / {100 * s['max_matrix_diff_from_off']:.1f} / {s['skipped']}"
                 for s in (r["summary"][n] for n in names)]
        d = r["summary"]["default"]
        lines.append(f"| {r['dataset']} | {r['run']} | " + " | ".join(cells)
                     + f" | {d['largest_norm_ratio']:.1f} | {d['largest_update_ratio']:.3f} |")
    lines += ["", "One batch of 10 samples of constant 1e4 (inside the default value range |x| ≤ 1e4) sent to a "
              "replay model trained on bucket 0 (3 passes); held-out accuracy of bucket 0 before → after:", "",
              "| stream | seed | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for d in dict.fromkeys(a["dataset"] for a in out["poison"]):
        for s in sorted({a["seed"] for a in out["poison"]}):
            cells = []
            for n in names:
                a = next(a for a in out["poison"] if a["dataset"] == d and a["seed"] == s and a["guard"] == n)
                cells.append(f"{100 * a['before']:.1f} → {100 * a['after']:.1f}" + (" (refused)" if a["skipped"] else ""))
            lines.append(f"| {d} | {s} | " + " | ".join(cells) + " |")
    write_markdown(markdown, "\n".join(lines), SECTION)


if __name__ == "__main__":
    sys.exit(entry_point(main, publish, SECTION))
