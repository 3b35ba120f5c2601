"""What the model-safety guards cost (issue 19): per training step, and per canary check.

    .venv/bin/python benchmarks/guard_cost.py [--reps 7] [--steps 300]
    .venv/bin/python benchmarks/guard_cost.py render benchmarks/results/guard_cost.json

Per step: `Learner.observe` on digits-rotated batches of 10 (MLP 2x100, lr 0.1), side by side in one
process, in rotating order, under three settings: `none` (StepGuard.step replaced by the bare SGD
update: no checks at all), `step guard` (the non-finite checks only: gradient_outlier_ratio 0,
max_update_ratio 0) and `default` (the step guard and the update-size guard). Each repetition times
`--steps` consecutive steps per setting after a warm-up; medians over repetitions of wall and
thread-CPU time per step.

Per canary check (guarded promotion): `Promotion.check` of a new version against the serving one on
the held-out sets of 5 buckets of digits-rotated (the serving version's accuracy is cached per
version, so one check is one pass of the learner's model over the sets), beside one training step.

Writes benchmarks/results/guard_cost.json and rewrites the `guard_cost` section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "proto")]  # this checkout, whatever the venv has installed

from benchmarks.common import (  # noqa: E402
    command_line, entry_point, machine, machine_line, median, timed, write_markdown, write_results)
from cl_engine import LearnerConfig, build_stream  # noqa: E402
from cl_engine.guard import StepGuard  # noqa: E402
from cl_engine.learner import Learner  # noqa: E402
from cl_engine.sgd import sgd_step  # noqa: E402
from server.promotion import Promotion, PromotionOptions  # noqa: E402

SECTION = "guard_cost"
SETTINGS = {"none": dict(gradient_outlier_ratio=0.0, max_update_ratio=0.0),
            "step guard": dict(gradient_outlier_ratio=0.0, max_update_ratio=0.0),
            "default": dict()}
STRATEGIES = ("naive", "replay")


def bare_step(self, grads, losses):
    sgd_step(self.optimizer, self.params, grads)
    return None


def learner_for(strategy: str, setting: str, stream) -> Learner:
    learner = Learner(LearnerConfig(strategy=strategy, lr=0.1, seed=0, device="cpu", **SETTINGS[setting]),
                      stream.input_shape, stream.num_classes)
    if setting == "none":
        learner.strategy.guard.step = bare_step.__get__(learner.strategy.guard, StepGuard)
    return learner


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / f"{SECTION}.json")
    p.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md")
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    stream = build_stream("digits-rotated")
    train = stream.buckets[0].train
    batches = [train.batch(torch.arange(i, i + 10) % len(train), train=True) for i in range(0, 10 * args.steps, 10)]
    loads = []
    steps = {}
    for strategy in STRATEGIES:
        learners = {s: learner_for(strategy, s, stream) for s in SETTINGS}
        for learner in learners.values():  # warm-up, past the outlier check's own warm-up
            for x, y in batches[:50]:
                learner.observe(x, y, 0)
        runs = {s: [] for s in SETTINGS}
        for rep in range(args.reps):
            order = list(SETTINGS)[rep % 3:] + list(SETTINGS)[:rep % 3]
            for s in order:
                it = iter(batches)
                runs[s].append(timed(lambda: learners[s].observe(*next(it), 0), args.steps))
            loads.append(__import__("os").getloadavg()[0])
        steps[strategy] = {s: {"wall_us": 1e6 * median([w for w, _ in r]), "cpu_us": 1e6 * median([c for _, c in r]),
                               "runs": r} for s, r in runs.items()}
        print(strategy, {s: round(v["cpu_us"], 1) for s, v in steps[strategy].items()}, file=sys.stderr)

    # one canary check against one training step
    learner = learner_for("replay", "default", stream)
    for j, bucket in enumerate(stream.buckets):
        learner.register_eval_set(j, bucket.test)
    promotion = Promotion(PromotionOptions(enabled=True, every_batches=10 ** 9, tolerance=1.0))
    promotion.serving(learner)  # the baseline
    it = iter(batches * (args.reps * 10 + 10))

    def one_check():
        learner.observe(*next(it), 0)
        assert promotion.check(learner) is True

    check = [timed(one_check, 5) for _ in range(args.reps)]
    step = [timed(lambda: learner.observe(*next(it), 0), 50) for _ in range(args.reps)]
    held_out = sum(len(b.test) for b in stream.buckets)
    canary = {"held_out_samples": held_out, "buckets": len(stream.buckets),
              "check_and_step_ms": {"wall": 1e3 * median([w for w, _ in check]), "cpu": 1e3 * median([c for _, c in check])},
              "step_ms": {"wall": 1e3 * median([w for w, _ in step]), "cpu": 1e3 * median([c for _, c in step])}}
    out = {"study": SECTION, "command": command_line(None), "machine": machine(), "loads": loads,
           "reps": args.reps, "steps": args.steps, "per_step": steps, "canary": canary,
           "wall_seconds": time.perf_counter() - t0}
    write_results(out, args.out)
    publish(out, args.out, args.markdown)
    return 0


def publish(out: dict, path: Path, markdown: Path) -> None:
    lines = ["### Cost of the model-safety guards (`benchmarks/guard_cost.py`)", "",
             f"Machine: {machine_line(out['machine'], out.get('loads'))}.", "",
             f"Command: `{out['command']}` ({out['wall_seconds'] / 60:.0f} min)", "",
             f"Per training step: `Learner.observe`, digits-rotated, MLP 2×100, batch 10, lr 0.1; medians over "
             f"{out['reps']} repetitions of {out['steps']} steps per setting, settings alternated in one process. "
             "`none`: no checks at all (the bare SGD update); `step guard`: the non-finite checks only; `default`: "
             "the step guard and the update-size guard. Thread-CPU beside wall time, µs per step.", "",
             "| strategy | none CPU / wall | step guard CPU / wall | default CPU / wall | default vs none (CPU) |",
             "|---|---|---|---|---|"]
    for strategy, r in out["per_step"].items():
        cells = [f"{r[s]['cpu_us']:.0f} / {r[s]['wall_us']:.0f}" for s in ("none", "step guard", "default")]
        ratio = r["default"]["cpu_us"] / r["none"]["cpu_us"]
        lines.append(f"| {strategy} | " + " | ".join(cells) + f" | {100 * (ratio - 1):+.1f} % |")
    c = out["canary"]
    lines += ["", f"One canary check (guarded promotion) on the held-out sets of {c['buckets']} buckets "
              f"({c['held_out_samples']} samples), measured as a training step followed by the check: "
              f"{c['check_and_step_ms']['cpu']:.1f} ms CPU ({c['check_and_step_ms']['wall']:.1f} ms wall), against "
              f"{c['step_ms']['cpu']:.2f} ms CPU ({c['step_ms']['wall']:.2f} ms wall) for a replay step alone: a check "
              "every 50 batches (the default) costs about "
              f"{100 * (c['check_and_step_ms']['cpu'] - c['step_ms']['cpu']) / (50 * c['step_ms']['cpu']):.0f} % "
              "of the training time on this stream. It grows with the held-out sets, not with the model's age."]
    write_markdown(markdown, "\n".join(lines), SECTION)


if __name__ == "__main__":
    sys.exit(entry_point(main, publish, SECTION))
