"""What the model-safety guards cost (issue 19): per training step, and per canary check.

    .venv/bin/python benchmarks/guard_cost.py [--reps 7] [--steps 300]
    .venv/bin/python benchmarks/guard_cost.py render benchmarks/results/guard_cost.json

Per step: `Learner.observe` on batches of 10, side by side in one process, in rotating order, under
three settings: `none` (StepGuard.step replaced by the bare SGD update, and the batch-norm statistics
neither saved nor read: no checks at all), `step guard` (the non-finite checks only:
gradient_outlier_ratio 0, max_update_ratio 0) and `default` (the step guard and the update-size guard,
which for a batch-norm model includes the statistics check). Two models: the digits MLP (2x100,
digits-rotated, lr 0.1, `--steps` steps a repetition) and a reduced ResNet18 on benchmarks/conv_images.py's
synthetic 3×32×32 images (lr 0.05, `--conv-steps`). Each repetition times the steps per setting after a
warm-up; medians over repetitions of wall and thread-CPU time per step.

Per canary check (guarded promotion): `Promotion.check` of a new version against the serving one on
the held-out sets of 5 buckets of digits-rotated (the serving version's accuracy is cached per
version, so one check is one pass of the learner's model over the sets), beside one training step.

Writes benchmarks/results/guard_cost.json and rewrites the `guard_cost` section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "proto")]  # this checkout, whatever the venv has installed

from benchmarks.conv_images import synthetic_stream  # noqa: E402
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


MODELS = {"mlp": dict(lr=0.1), "reduced-resnet18": dict(lr=0.05)}


def bare_step(self, grads, losses):
    sgd_step(self.optimizer, self.params, grads)
    return None


def learner_for(strategy: str, setting: str, stream, model: str = "mlp") -> Learner:
    learner = Learner(LearnerConfig(strategy=strategy, model=model, seed=0, device="cpu", **MODELS[model],
                                    **SETTINGS[setting]), stream.input_shape, stream.num_classes)
    if setting == "none":
        guard = learner.strategy.guard
        guard.step = bare_step.__get__(guard, StepGuard)
        guard.save_buffers = guard.before_forward = lambda: None
    return learner


def batches_of_ten(stream, count: int) -> list:
    """`count` consecutive training batches of 10 from the stream's first bucket (wrapping around)."""
    train = stream.buckets[0].train
    return [train.batch(torch.arange(i, i + 10) % len(train), train=True) for i in range(0, 10 * count, 10)]


def per_step(model: str, stream, steps: int, reps: int, loads: list[float]) -> dict:
    """Per strategy and setting: medians of wall and thread-CPU µs per step."""
    batches = batches_of_ten(stream, steps)
    out = {}
    for strategy in STRATEGIES:
        learners = {s: learner_for(strategy, s, stream, model) for s in SETTINGS}
        for learner in learners.values():  # warm-up, past the outlier check's own warm-up
            for x, y in (batches * 50)[:50]:
                learner.observe(x, y, 0)
        runs = {s: [] for s in SETTINGS}
        for rep in range(reps):
            order = list(SETTINGS)[rep % 3:] + list(SETTINGS)[:rep % 3]
            for s in order:
                it = iter(batches)
                runs[s].append(timed(lambda: learners[s].observe(*next(it), 0), steps))
            loads.append(os.getloadavg()[0])
        out[strategy] = {s: {"wall_us": 1e6 * median([w for w, _ in r]), "cpu_us": 1e6 * median([c for _, c in r]),
                             "runs": r} for s, r in runs.items()}
        print(model, strategy, {s: round(v["cpu_us"], 1) for s, v in out[strategy].items()}, file=sys.stderr)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--conv-steps", type=int, default=30)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / f"{SECTION}.json")
    p.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md")
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    stream = build_stream("digits-rotated")
    images = synthetic_stream(1, 10 * args.conv_steps, 10)
    loads = []
    steps = {"mlp": per_step("mlp", stream, args.steps, args.reps, loads),
             "reduced-resnet18": per_step("reduced-resnet18", images, args.conv_steps, args.reps, loads)}
    batches = batches_of_ten(stream, args.steps)

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
           "reps": args.reps, "steps": args.steps, "conv_steps": args.conv_steps, "per_step": steps, "canary": canary,
           "wall_seconds": time.perf_counter() - t0}
    write_results(out, args.out)
    publish(out, args.out, args.markdown)
    return 0


def publish(out: dict, path: Path, markdown: Path) -> None:
    lines = ["### Cost of the model-safety guards (`benchmarks/guard_cost.py`)", "",
             f"Machine: {machine_line(out['machine'], out.get('loads'))}.", "",
             f"Command: `{out['command']}` ({out['wall_seconds'] / 60:.0f} min)", "",
             f"Per training step: `Learner.observe`, batch 10; the digits MLP 2×100 on digits-rotated (lr 0.1, "
             f"{out['steps']} steps a repetition) and a reduced ResNet18 on synthetic 3×32×32 images (lr 0.05, "
             f"{out['conv_steps']} steps); medians over {out['reps']} repetitions per setting, settings alternated in "
             "one process. `none`: no checks at all (the bare SGD update); `step guard`: the non-finite checks only; "
             "`default`: the step guard and the update-size guard (with the batch-norm statistics check for the "
             "ResNet). Thread-CPU beside wall time, µs per step.", "",
             "| model | strategy | none CPU / wall | step guard CPU / wall | default CPU / wall | default vs none (CPU) |",
             "|---|---|---|---|---|---|"]
    for model, strategies in out["per_step"].items():
        for strategy, r in strategies.items():
            cells = [f"{r[s]['cpu_us']:.0f} / {r[s]['wall_us']:.0f}" for s in ("none", "step guard", "default")]
            ratio = r["default"]["cpu_us"] / r["none"]["cpu_us"]
            lines.append(f"| {model} | {strategy} | " + " | ".join(cells) + f" | {100 * (ratio - 1):+.1f} % |")
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
