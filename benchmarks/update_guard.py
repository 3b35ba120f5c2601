"""Does the update-size guard change results on the normal streams? (issues 19, 24)

    .venv/bin/python benchmarks/update_guard.py [--seeds 3] [--epochs 1 5] [--datasets digits-rotated ...]
    .venv/bin/python benchmarks/update_guard.py --conv [--seeds 1]     # reduced ResNet18 on images: ~40 min here
    .venv/bin/python benchmarks/update_guard.py render benchmarks/results/update_guard.json

Digits (default): every run of docs/engine.md's results table (benchmarks/strategies.py's RUNS, same
settings), per seed and number of passes, three times: the update-size guard off (gradient_outlier_ratio
0, max_update_ratio 0), the default (10 and 10), and gradient-norm clipping at 1.0 (about the median
gradient norm of these streams) with the update-size guard off. For each it records ACC, the largest
difference of the accuracy matrix from the unguarded run, and the steps the guard refused. Then, from a
model trained on one bucket, one batch of constant 1e4 (inside the default value range) under each: the
held-out accuracy before and after.

`--conv` (section update_guard_conv): the conv image study's stream and model (benchmarks/conv_images.py:
5 buckets × 1000 synthetic 3×32×32 images, reduced ResNet18, its memories), every strategy at batch 10 and
64 (GEM at 64 only: at 10 it takes ~7 minutes a run here), guard off and default; the largest gradient ratio
and batch-norm statistics move it saw; then single batches sent to a replay model trained on bucket 0:
constant 1e4, noise of standard deviation 1e4 (clamped to the default range), ten of the bucket's own images
ten times brighter, blank frames (constant 0, and noise of standard deviation 0.01), and one of the bucket's
images ten times over.

Writes benchmarks/results/update_guard.json (update_guard_conv.json) and rewrites its section of
BENCHMARKS.md.
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
from cl_engine.guard import OUTLIER_WARMUP, ShiftBar, StepGuard, TypicalNorm  # noqa: E402
from cl_engine.learner import Learner  # noqa: E402
from cl_engine.schedule import bucket_batches  # noqa: E402

SECTION = "update_guard"
CONV_SECTION = "update_guard_conv"
OFF = dict(gradient_outlier_ratio=0.0, max_update_ratio=0.0)
GUARDS = {"off": OFF,
          "default": dict(gradient_outlier_ratio=10.0, max_update_ratio=10.0),
          "clip 1.0": dict(OFF, clip_grad_norm=1.0)}


# each checked gradient norm / its typical norm; each step's batch-norm statistics shift / its allowance
RATIOS: dict[str, list[float]] = {"gradient": [], "statistics": []}
UPDATES: list[float] = []  # each step's update bound / the weights' norm (at least 1)


def recording(outlier, shifted, too_large):
    """The guard's outlier, statistics and update-size checks, also noting how far each step is from their
    bars (changes nothing)."""
    def checked_outlier(self, norm):
        if self.ratio and self.seen >= OUTLIER_WARMUP:
            RATIOS["gradient"].append(norm / self.value)
        return outlier(self, norm)

    def checked_shift(self, shift):
        if self.ratio and self.seen >= OUTLIER_WARMUP:
            RATIOS["statistics"].append(shift / self.allowance)
        return shifted(self, shift)

    def checked_update(self, update, p_norm):
        if self.update_ratio:
            UPDATES.append(update / max(p_norm, 1.0))
        return too_large(self, update, p_norm)
    return checked_outlier, checked_shift, checked_update


def start_recording() -> None:
    for ratios in RATIOS.values():
        ratios.clear()
    UPDATES.clear()


def recorded() -> dict:
    return {"largest_norm_ratio": max(RATIOS["gradient"], default=None),
            "largest_statistics_ratio": max(RATIOS["statistics"], default=None),
            "largest_update_ratio": max(UPDATES, default=None)}


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


def summary(runs: dict[str, list[dict]]) -> dict:
    """Per guard: mean ACC, largest accuracy-matrix difference from the unguarded run (same seed), steps refused,
    the largest ratios it saw."""
    return {name: {"acc_mean": statistics.mean(r["acc"] for r in rs),
                   "max_matrix_diff_from_off": max(max_diff(r["matrix"], o["matrix"]) for r, o in zip(rs, runs["off"])),
                   "skipped": sum(sum(r["skipped_steps"].values()) for r in rs),
                   **{k: max((r[k] for r in rs if r[k] is not None), default=None)
                      for k in ("largest_norm_ratio", "largest_statistics_ratio", "largest_update_ratio")}}
            for name, rs in runs.items()}


def run_once(stream, config: LearnerConfig, batch_size: int, epochs: int) -> dict:
    start_recording()
    report = run_stream(stream, config, batch_size=batch_size, epochs=epochs, progress=False)
    return {"acc": report["metrics"]["acc"], "matrix": report["accuracy_matrix"], "skipped_steps": report["skipped_steps"],
            "batches_trained": report["batches_trained"], **recorded()}


def digits_study(args) -> dict:
    rows = []
    for dataset in args.datasets:
        streams = {order: build_stream(dataset, order=order) for order in ("time", "iid")}
        for epochs in args.epochs:
            for label, (order, options) in RUNS.items():
                runs = {name: [run_once(streams[order], LearnerConfig(lr=0.1, seed=seed, device="cpu", **options, **guard),
                                        10, epochs) for seed in range(args.seeds)] for name, guard in GUARDS.items()}
                row = {"dataset": dataset, "run": label, "epochs": epochs, "runs": runs, "summary": summary(runs)}
                rows.append(row)
                progress(f"{dataset} {label}, {epochs} pass(es)", row)
    attacks = [{"dataset": d, "seed": s, "guard": name, **poison(d, s, guard)}
               for d in args.datasets for s in range(args.seeds) for name, guard in GUARDS.items()]
    return {"study": SECTION, "settings": "MLP 2x100, SGD lr 0.1, batch 10; memory 50 per bucket (250)",
            "guards": GUARDS, "results": rows, "poison": attacks}


def conv_study(args) -> dict:
    from benchmarks.conv_images import FULL, synthetic_stream
    from benchmarks.peer_avalanche import our_config

    guards = {k: GUARDS[k] for k in ("off", "default")}
    size = {k: v for k, v in FULL.items() if k != "reps"}
    settings = argparse.Namespace(**size, lr=0.05, memory_strength=0.5, model="reduced-resnet18",
                                  our_replay_retention="reservoir-end")
    rows = []
    for seed in range(args.seeds):
        stream = synthetic_stream(size["buckets"], size["samples"], size["test_samples"], seed=seed)
        for strategy, batch in CONV_RUNS:
            config = our_config(strategy, settings, seed, len(stream))
            runs = {name: [run_once(stream, config.model_copy(update=guard), batch, 1)] for name, guard in guards.items()}
            row = {"seed": seed, "strategy": strategy, "batch_size": batch, "runs": runs, "summary": summary(runs)}
            rows.append(row)
            progress(f"seed {seed} {strategy} b{batch}", row)
    stream = synthetic_stream(size["buckets"], size["samples"], size["test_samples"], seed=0)
    attacks = [{"seed": seed, "guard": name, "batch": kind, **conv_poison(stream, seed, guard, kind, settings)}
               for seed in range(args.seeds) for kind in CONV_POISON for name, guard in guards.items()]
    return {"study": CONV_SECTION, "stream": stream.summary(),
            "settings": f"reduced ResNet18, SGD lr 0.05, 1 pass; replay memory {size['replay_capacity']} (reservoir "
                        f"written at bucket ends), GEM/A-GEM {size['memory_per_bucket']} memories per bucket, A-GEM "
                        f"sample {size['agem_sample_size']}",
            "guards": guards, "results": rows, "poison": attacks}


CONV_RUNS = (("naive", 10), ("replay", 10), ("agem", 10), ("naive", 64), ("replay", 64), ("gem", 64), ("agem", 64))
# each from a generator and ten of the bucket's own images
CONV_POISON = {"constant 1e4": lambda g, own: torch.full_like(own, 1e4),
               "noise, sd 1e4": lambda g, own: (1e4 * torch.randn(own.shape, generator=g)).clamp(-1e4, 1e4),
               "inputs ×10": lambda g, own: 10 * own,  # ten times brighter
               "constant 0": lambda g, own: torch.zeros_like(own),  # a blank frame
               "noise, sd 0.01": lambda g, own: 0.01 * torch.randn(own.shape, generator=g),  # a dark frame's sensor noise
               "one image ×10": lambda g, own: own[:1].repeat(len(own), *[1] * (own.dim() - 1))}


def conv_poison(stream, seed: int, guard: dict, kind: str, settings) -> dict:
    """Held-out accuracy of bucket 0 for a replay model trained on it (one pass, batch 10), before and after
    one batch of 10 poisoned samples with random labels."""
    from benchmarks.peer_avalanche import our_config

    bucket = stream.buckets[0]
    config = our_config("replay", settings, seed, len(stream)).model_copy(update=guard)
    learner = Learner(config, stream.input_shape, stream.num_classes)
    for index in bucket_batches(len(bucket.train), 10, 1, seed, 0):
        learner.observe(*bucket.train.batch(index, train=True), 0)
    before = learner.evaluate(bucket.test)
    g = torch.Generator().manual_seed(seed)
    x = CONV_POISON[kind](g, bucket.train.batch(torch.arange(10))[0])
    start_recording()
    step = learner.observe(x, torch.randint(0, stream.num_classes, (10,), generator=g), 0)
    return {"before": before, "after": learner.evaluate(bucket.test), "skipped": step.skipped,
            "statistics_ratio": recorded()["largest_statistics_ratio"]}


def progress(label: str, row: dict) -> None:
    print(f"{label}: " + "  ".join(f"{n}: acc {s['acc_mean']:.3f} diff {s['max_matrix_diff_from_off']:.3f} "
                                   f"skipped {s['skipped']}" for n, s in row["summary"].items()), file=sys.stderr)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=None, help="default 3 (--conv: 1)")
    p.add_argument("--epochs", type=int, nargs="+", default=[1, 5], help="passes over each bucket (digits)")
    p.add_argument("--datasets", nargs="+", default=["digits-rotated", "digits-permuted"])
    p.add_argument("--conv", action="store_true", help="the conv image study instead (section update_guard_conv)")
    p.add_argument("--out", type=Path, default=None, help="default benchmarks/results/<section>.json")
    p.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md")
    args = p.parse_args()
    args.seeds = args.seeds or (1 if args.conv else 3)
    section = CONV_SECTION if args.conv else SECTION
    out_path = args.out or ROOT / "benchmarks" / "results" / f"{section}.json"
    torch.set_num_threads(1)
    TypicalNorm.outlier, ShiftBar.outlier, StepGuard._too_large = recording(TypicalNorm.outlier, ShiftBar.outlier,
                                                                            StepGuard._too_large)
    t0 = time.perf_counter()
    out = conv_study(args) if args.conv else digits_study(args)
    out = {**out, "command": command_line(None), "machine": machine(), "seeds": args.seeds,
           "wall_seconds": time.perf_counter() - t0}
    write_results(out, out_path)
    publish(out, out_path, args.markdown)
    return 0


def publish(out: dict, path: Path, markdown: Path) -> None:
    if out["study"] == CONV_SECTION:
        return publish_conv(out, markdown)
    names = list(out["guards"])
    lines = [f"### Update-size guard on the normal streams (`benchmarks/update_guard.py`)", "",
             f"Machine: {machine_line(out['machine'])}.", "",
             f"Command: `{out['command']}` ({out['wall_seconds'] / 60:.0f} min)", "",
             "Every run of docs/engine.md's results table, " + f"{out['seeds']} seeds, at each number of passes over "
             "a bucket, under each guard: mean ACC, the largest difference of any accuracy-matrix entry from the "
             "unguarded run (same seed), steps refused; and, under the default, the largest ratio of a step's "
             "gradient norm to the typical norm that the guard saw (it refuses above 10) and the largest update "
             "bound as a fraction of the weights' norm (it refuses above 10).", "",
             "| stream | run | passes | " + " | ".join(f"{n}: ACC % / max ΔR pt / skipped" for n in names)
             + " | largest norm / typical | largest update / weights |", "|---|---|---|" + "---|" * (len(names) + 2)]
    for r in out["results"]:
        lines.append(f"| {r['dataset']} | {r['run']} | {r.get('epochs', 1)} | " + guard_cells(r, names)
                     + f" | {ratio(r, 'largest_norm_ratio')} | {ratio(r, 'largest_update_ratio', '{:.3f}')} |")
    lines += ["", "One batch of 10 samples of constant 1e4 (inside the default value range |x| ≤ 1e4) sent to a "
              "replay model trained on bucket 0 (3 passes); held-out accuracy of bucket 0 before → after:", "",
              "| stream | seed | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for d in dict.fromkeys(a["dataset"] for a in out["poison"]):
        for s in sorted({a["seed"] for a in out["poison"]}):
            lines.append(f"| {d} | {s} | " + poison_cells([a for a in out["poison"]
                                                           if a["dataset"] == d and a["seed"] == s], names) + " |")
    write_markdown(markdown, "\n".join(lines), SECTION)


def publish_conv(out: dict, markdown: Path) -> None:
    names = list(out["guards"])
    st = out["stream"]
    lines = [f"### Update-size guard on a conv model's images (`benchmarks/update_guard.py`, {CONV_SECTION})", "",
             f"Machine: {machine_line(out['machine'])}.", "",
             f"Command: `{out['command']}` ({out['wall_seconds'] / 60:.0f} min)", "",
             f"benchmarks/conv_images.py's stream ({st['buckets']} buckets × {st['train_sizes'][0]} "
             f"synthetic 3×32×32 images) and settings: {out['settings']}; {out['seeds']} seed(s). Per run and guard: "
             "ACC, the largest difference of any accuracy-matrix entry from the unguarded run, steps refused; under "
             "the default, the largest ratio it saw of a step's gradient norm to the typical norm and the largest "
             "move of the batch-norm statistics in a step (a channel's running variance grown by that factor, its "
             "mean moved by that many standard deviations, or a layer's channels scaled up by that factor by the "
             "batch's own small variance; it refuses each above 10), and the largest update "
             "bound as a fraction of the weights' norm (it refuses above 10).", "",
             "| seed | strategy, batch | " + " | ".join(f"{n}: ACC % / max ΔR pt / skipped" for n in names)
             + " | largest gradient / typical | largest statistics move | largest update / weights |",
             "|---|---|" + "---|" * (len(names) + 3)]
    for r in out["results"]:
        lines.append(f"| {r['seed']} | {r['strategy']}, {r['batch_size']} | " + guard_cells(r, names)
                     + f" | {ratio(r, 'largest_norm_ratio')} | {ratio(r, 'largest_statistics_ratio', '{:.2f}')} "
                     f"| {ratio(r, 'largest_update_ratio', '{:.3f}')} |")
    lines += ["", "One batch of 10 poisoned samples (inside the default value range |x| ≤ 1e4, random labels) sent to "
              "a replay model trained on bucket 0 (one pass, batch 10); held-out accuracy of bucket 0 before → after, "
              "and the check that refused it:", "",
              "| seed | batch | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for s in sorted({a["seed"] for a in out["poison"]}):
        for kind in dict.fromkeys(a["batch"] for a in out["poison"]):
            lines.append(f"| {s} | {kind} | " + poison_cells([a for a in out["poison"]
                                                              if a["seed"] == s and a["batch"] == kind], names) + " |")
    write_markdown(markdown, "\n".join(lines), CONV_SECTION)


def guard_cells(row: dict, names: list[str]) -> str:
    return " | ".join(f"{100 * s['acc_mean']:.1f} / {100 * s['max_matrix_diff_from_off']:.1f} / {s['skipped']}"
                      for s in (row["summary"][n] for n in names))


def ratio(row: dict, key: str, fmt: str = "{:.1f}") -> str:
    value = row["summary"]["default"].get(key)
    return "–" if value is None else fmt.format(value)


def poison_cells(attacks: list[dict], names: list[str]) -> str:
    cells = []
    for n in names:
        a = next(a for a in attacks if a["guard"] == n)
        reading = f"statistics move {a['statistics_ratio']:.3g}" if a.get("statistics_ratio") is not None else ""
        notes = ", ".join(x for x in (f"refused: {a['skipped']}" if a["skipped"] else "", reading) if x)
        cells.append(f"{100 * a['before']:.1f} → {100 * a['after']:.1f}" + (f" ({notes})" if notes else ""))
    return " | ".join(cells)


if __name__ == "__main__":
    sys.exit(entry_point(main, publish, SECTION))
