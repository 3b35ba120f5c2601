"""Replay at defaults against Avalanche's default Replay over many seeds, with controlled variants (issue 21).

    PYTHONPATH=. /work/venv-bench/bin/python benchmarks/peer_replay_seeds.py --seeds 0-59
    PYTHONPATH=. /work/venv-bench/bin/python benchmarks/peer_replay_seeds.py --seeds 30-99 --variants ours ours-iid

Each run is one (seed, stream, variant) of `peer_avalanche.py`'s `replay-defaults` row: ours
`--strategy replay --buffer-capacity 500` (reservoir-end), the peer's `Replay(mem_size=500)`
(ExperienceBalancedBuffer), both shuffling every bucket, the same initial weights per seed. Variants of
ours, each changing one thing:

- `ours`: the engine as it is (replay's memory batches taken in shuffled passes over the memory, each as
  large as the bucket's batches, its last, partial batch's too),
- `ours-partial-memory-batch`: the memory batch as large as the incoming batch, so a bucket's last,
  partial batch (8 samples here) replays 8 memories where the peer replays its batch_size_mem, 10 (the
  engine before issue 21's fix, and the one difference of arithmetic that peer_avalanche.py's replay
  equivalence check found),
- `ours-iid`: replay's memory batch drawn independently every step (`randperm(size)[:n]`, the engine
  before issue 21's change),
- `ours-np-order`: the bucket orders drawn from numpy's SeedSequence-seeded generator instead of the
  schedule's (hypothesis: the schedule's permutations are correlated with another draw),
- `ours-balanced`: the memory split evenly over the buckets seen, each share a random subset of its
  bucket (`--retention per-bucket --memory-per-bucket 500 --buffer-capacity 500`), which is what
  Avalanche's ExperienceBalancedBuffer keeps,
- `ours-rng-apart`: the learner's generator (the reservoir's and the memory passes' draws) seeded apart
  from the initial weights: by default both are Mersenne Twisters seeded with the run's seed, so the
  memory's first draws are made of the same numbers as the first layer's initial weights (hypothesis:
  that coupling costs accuracy),
- `peer`: Avalanche,
- `ours-naive`, `peer-naive`: naive fine-tuning on both sides, shuffled, paired with each other only
  (hypothesis: the gap is in what replay shares with naive: the bucket orders, the training step).

Runs recorded before the memory-batch fix carry the partial memory batch: the old `ours` is recorded as
`ours-partial-memory-batch` (which reproduces it), the old one-change variants as `<variant>/partial-memory-batch`.
Every variant is paired with the peer, `ours` and `ours-partial-memory-batch` (naive with naive only).

Writes every run and the paired differences (mean ± sem over seeds) to
benchmarks/results/peer_replay_seeds.json (merged with the runs already there) and prints them.
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "proto")]

import benchmarks.peer_avalanche as pa  # noqa: E402
import cl_engine.run as run_module  # noqa: E402
from cl_engine import LearnerConfig, StreamOptions, build_stream  # noqa: E402
from cl_engine.buffer import ReplayBuffer  # noqa: E402
from cl_engine.learner import Learner  # noqa: E402
from cl_engine.strategies.replay import Replay  # noqa: E402
from cl_engine.schedule import bucket_batches  # noqa: E402

VARIANTS = ("ours", "ours-partial-memory-batch", "ours-iid", "ours-np-order", "ours-balanced", "ours-rng-apart", "peer",
            "ours-naive", "peer-naive")
BASES = ("peer", "ours", "ours-partial-memory-batch", "peer-naive")
ARGS = SimpleNamespace(lr=0.1, batch_size=10, epochs=1, replay_capacity=500, memory_per_bucket=256,
                       agem_sample_size=256, memory_strength=0.5, peer_replay_storage="balanced",
                       our_replay_retention="reservoir-end", peer_shuffle=True)


def np_order_batches(n, batch_size, epochs, seed, bucket, within="shuffled"):
    for epoch in range(epochs):
        order = torch.from_numpy(np.random.default_rng([seed, 77, bucket, epoch]).permutation(n))
        yield from torch.split(order, batch_size)


def balanced_config(strategy, args, seed, num_buckets):
    return LearnerConfig(model="mlp", strategy="replay", lr=args.lr, seed=seed, device="cpu",
                         buffer_capacity=args.replay_capacity, retention="per-bucket",
                         memory_per_bucket=args.replay_capacity)


def learner_with_rng_apart(init):
    """Learner.__init__, then the learner's generator reseeded from a seed of its own (a SeedSequence's
    draw from (seed, 21)), unrelated to the weights' torch.manual_seed(seed)."""
    def __init__(self, config, *a, **k):
        init(self, config, *a, **k)
        self.generator.manual_seed(int(np.random.SeedSequence([config.seed, 21]).generate_state(1)[0]))
    return __init__


def partial_memory_batch(observe):
    """Replay.observe with the memory batch as large as the incoming batch (the bucket's largest batch
    forgotten before every step)."""
    def step(self, x, y, bucket):
        self.bucket, self.largest = bucket, 0
        return observe(self, x, y, bucket)
    return step


def run(variant: str, stream, seed: int) -> dict:
    """One run of `variant`, with its one change patched in for the run only."""
    draw, batches, config, init, observe = (ReplayBuffer.draw, run_module.bucket_batches, pa.our_config,
                                            Learner.__init__, Replay.observe)
    try:
        if variant == "ours-iid":
            ReplayBuffer.draw = lambda self, n, generator: self.sample(n, generator)
        elif variant == "ours-np-order":
            run_module.bucket_batches = np_order_batches
        elif variant == "ours-balanced":
            pa.our_config = balanced_config
        elif variant == "ours-rng-apart":
            Learner.__init__ = learner_with_rng_apart(init)
        elif variant == "ours-partial-memory-batch":
            Replay.observe = partial_memory_batch(observe)
        if variant.endswith("naive"):
            return (pa.run_peer if variant == "peer-naive" else pa.run_ours)(stream, "naive", ARGS, seed)
        if variant == "peer":
            return pa.run_peer(stream, "replay-defaults", ARGS, seed)
        return pa.run_ours(stream, "replay-defaults", ARGS, seed)
    finally:
        ReplayBuffer.draw, run_module.bucket_batches, pa.our_config, Learner.__init__, Replay.observe = (
            draw, batches, config, init, observe)


def seeds(text: str) -> list[int]:
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def summary(runs: list[dict]) -> list[dict]:
    acc = collections.defaultdict(dict)
    for r in runs:
        acc[(r["stream"], r["seed"])][r["variant"]] = r["acc"]
    rows = []
    for variant in dict.fromkeys(r["variant"] for r in runs):
        for base in BASES:
            if variant.endswith("naive") != base.endswith("naive"):  # naive is paired with naive only
                continue
            for stream in ("digits-rotated", "digits-permuted", "both"):
                diffs = [v[variant] - v[base] for (s, _), v in sorted(acc.items())
                         if variant in v and base in v and variant != base and stream in (s, "both")]
                if len(diffs) > 1:
                    rows.append({"variant": variant, "against": base, "stream": stream, "pairs": len(diffs),
                                 "mean_diff": statistics.mean(diffs),
                                 "sem": statistics.stdev(diffs) / len(diffs) ** 0.5,
                                 "sd_per_seed": statistics.stdev(diffs)})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=seeds, default=seeds("0-59"), help="a seed or a range, e.g. 0-59")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--streams", nargs="+", default=list(pa.STREAMS))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "peer_replay_seeds.json")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    warnings.showwarning = lambda *a, **k: None
    torch.set_num_threads(1)
    old = json.loads(args.out.read_text())["runs"] if args.out.exists() else []
    streams = {s: build_stream(s, StreamOptions(seed=0)) for s in args.streams}
    runs = []
    for seed in args.seeds:
        for name, stream in streams.items():
            for variant in args.variants:
                t0 = time.perf_counter()
                r = run(variant, stream, seed)
                runs.append({"variant": variant, "seed": seed, "stream": name, "acc": r["acc"], "bwt": r["bwt"]})
                print(f"seed {seed} {name} {variant}: ACC {r['acc']:.4f} ({time.perf_counter() - t0:.1f}s)",
                      file=sys.stderr, flush=True)
    new = {(r["variant"], r["seed"], r["stream"]) for r in runs}
    runs = [r for r in old if (r["variant"], r["seed"], r["stream"]) not in new] + runs
    out = {"study": "replay at defaults vs Avalanche's default Replay, many seeds, controlled variants",
           "machine": pa.peer_machine(), "settings": vars(ARGS), "runs": runs, "summary": summary(runs)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    for row in out["summary"]:
        print(f"{row['variant']:14s} - {row['against']:8s} {row['stream']:16s} {row['mean_diff'] * 100:+.2f} ± "
              f"{row['sem'] * 100:.2f} pt ({row['pairs']} seeds; sd per seed {row['sd_per_seed'] * 100:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
