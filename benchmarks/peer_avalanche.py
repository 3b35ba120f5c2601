"""Peer comparison: cl_engine against Avalanche (avalanche-lib), in one process, side by side.

    .venv-bench/bin/python benchmarks/peer_avalanche.py            # default: 5 repetitions, ~4 min on 2 cores
    .venv-bench/bin/python benchmarks/peer_avalanche.py --reps 9   # more repetitions

(set-up of .venv-bench: benchmarks/README.md). Writes benchmarks/results/peer_avalanche.json,
prints a table and rewrites the `peer_avalanche` section of BENCHMARKS.md.

What is the same for both libraries
- The stream: cl_engine's digits-rotated / digits-permuted buckets; Avalanche gets the very same
  tensors through its tensor-list benchmark helper (one experience per bucket, task label 0).
- The model and its initial weights: cl_engine's `mlp` built by a cl_engine Learner with the run's
  seed; its state_dict is copied into the model handed to Avalanche.
- Optimizer SGD (lr 0.1, no momentum, no weight decay), cross-entropy, batch 10, 1 epoch, CPU,
  the same torch in the same process, the same thread count.
- Memory budgets and policies: replay holds `--replay-capacity` samples in total, chosen by a
  reservoir over the stream and written at the end of each bucket on both sides (ours
  `reservoir-end`, the peer's ReservoirSamplingBuffer); GEM and A-GEM keep
  `--memory-per-bucket` samples of every finished bucket; A-GEM's reference gradient uses
  `--agem-sample-size` memories; GEM's margin 0.5 and ε = 1e-3 on the Gram matrix (both).
- The accuracy matrix: after each bucket, accuracy on every bucket's test split, plus the row
  before training; ACC/BWT/FWT come from cl_engine.metrics.gem_metrics for both. Avalanche's row
  is read from its own per-experience eval results (Top1_Acc_Exp).

What is timed (the same thing for both): training only. Ours: `run_stream`'s `train_seconds`
(the observe loop over every batch, incl. fetching the batch, plus end-of-bucket memory
consolidation; evaluation excluded). Peer: the wall time of `strategy.train(experience)` for
each experience (its dataloaders, plugins incl. memory updates after each experience, and
its evaluation plugin's training-phase callbacks; its eval calls happen outside the timer).
Avalanche's evaluator is minimal: experience accuracy only, no loggers, collect_all off.

How runs are ordered: one warm-up of every (library, strategy) on a small stream first
(discarded), then for each repetition, stream and strategy both libraries run back to back,
alternating which goes first. Repetition r uses seed `--seed + r` (weights and sampling) for
both; the table shows medians over repetitions.

Two equivalence checks come first, on the first stream and seed; their largest differences
of the accuracy matrices are reported (they must be 0 up to float rounding):
- naive: fine-tuning with Avalanche's shuffling turned off feeds both engines identical batches
  from identical weights.
- replay: the same, with the randomness of replay shared too. Both train each bucket in stream
  order; ours walks its memory in slot order instead of shuffled passes (ReplayBuffer.pass_order),
  as the peer's unshuffled memory loader walks its memory; the peer's storage policy (KeepOurs)
  keeps, after each experience, exactly the memories ours holds after that bucket, in our slot
  order. Every step then sees the same new batch and the same memory batch. (This check found the
  one place where the two replays' arithmetic differed: a bucket's last, partial batch replayed as
  many memories as it held, where the peer replays its fixed batch_size_mem; issue 21 fixed it.)
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import random
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "proto")]  # this checkout, whatever the venv has installed

from benchmarks.common import command_line, machine, median, write_markdown, write_results  # noqa: E402
from cl_engine import LearnerConfig, build_stream, run_stream  # noqa: E402
from cl_engine.buffer import ReplayBuffer  # noqa: E402
from cl_engine.learner import Learner  # noqa: E402
from cl_engine.metrics import gem_metrics  # noqa: E402
from cl_engine.models import build_model  # noqa: E402
from cl_engine.streams import StreamOptions  # noqa: E402

# replay-defaults: each library's replay as a user types it, everything else at its defaults: ours
# `--strategy replay --buffer-capacity 500` (reservoir-end, shuffled buckets), the peer's Replay(mem_size=500)
# (ExperienceBalancedBuffer, shuffled experiences)
STRATEGIES = ("naive", "replay", "replay-defaults", "gem", "agem")
STREAMS = ("digits-rotated", "digits-permuted")
EVAL_MB = 512
SECTION = "peer_avalanche"


# -- settings shared by both ----------------------------------------------------------------------

def our_config(strategy: str, args, seed: int, num_buckets: int) -> LearnerConfig:
    kw = dict(model=getattr(args, "model", "mlp"), strategy=strategy, lr=args.lr, seed=seed, device="cpu",
              precision=getattr(args, "precision", "fp32"), channels_last=getattr(args, "channels_last", False))
    if strategy == "replay-defaults":
        return LearnerConfig(**{**kw, "strategy": "replay"}, buffer_capacity=args.replay_capacity)
    if strategy == "replay":
        kw.update(buffer_capacity=args.replay_capacity, retention=args.our_replay_retention)
        if args.our_replay_retention == "per-bucket":  # Avalanche's ExperienceBalancedBuffer, in our terms
            kw.update(memory_per_bucket=args.replay_capacity)
        elif args.our_replay_retention == "ratio":  # a share of each bucket, no capacity (conv_images --retain-ratio)
            kw.update(buffer_capacity=None, retain_ratio=args.retain_ratio)
    elif strategy in ("gem", "agem"):
        # per-bucket retention (the default for GEM/A-GEM); room for every bucket's memories
        kw.update(memory_per_bucket=args.memory_per_bucket, buffer_capacity=args.memory_per_bucket * num_buckets,
                  memory_strength=args.memory_strength, qp_eps=1e-3, agem_sample_size=args.agem_sample_size)
    return LearnerConfig(**kw)


def initial_state(config: LearnerConfig, stream) -> dict:
    """The weights run_stream's learner starts from (a Learner seeds its model with config.seed)."""
    learner = Learner(config, stream.input_shape, stream.num_classes)
    return copy.deepcopy(learner.model.state_dict())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# -- ours -----------------------------------------------------------------------------------------

class _EvalCPU:
    """CPU time spent in Learner.evaluate_all, so that ours can also be reported as training CPU time
    (thread_time of run_stream minus its evaluations). Wraps the method for the benchmark process only."""

    seconds = 0.0

    @classmethod
    def install(cls) -> None:
        if getattr(Learner.evaluate_all, "_timed", False):
            return
        original = Learner.evaluate_all

        def evaluate_all(self):
            t0 = time.thread_time()
            try:
                return original(self)
            finally:
                cls.seconds += time.thread_time() - t0

        evaluate_all._timed = True
        Learner.evaluate_all = evaluate_all


def in_stream_order(stream):
    """The stream, its own order standing in for upload time (the digits streams have no dates), so that
    `within="upload-time"` trains each bucket's first pass in the order Avalanche gets unshuffled."""
    return dataclasses.replace(stream, info={**stream.info, "samples_without_upload_time": 0})


def run_ours(stream, strategy: str, args, seed: int, shuffle: bool | None = None) -> dict:
    shuffle = args.peer_shuffle if shuffle is None else shuffle
    config = our_config(strategy, args, seed, len(stream))
    seed_everything(seed)
    _EvalCPU.install()
    eval_cpu0, cpu0 = _EvalCPU.seconds, time.thread_time()
    if not shuffle:
        stream = in_stream_order(stream)
    report = run_stream(stream, config, batch_size=args.batch_size, epochs=args.epochs, progress=False,
                        within="shuffled" if shuffle else "upload-time")
    train_cpu = time.thread_time() - cpu0 - (_EvalCPU.seconds - eval_cpu0)
    R = np.array(report["accuracy_matrix"])
    b = np.array(report["initial_accuracy"])
    return {"R": R.tolist(), "b": b.tolist(), **gem_metrics(R, b), "train_seconds": report["train_seconds"],
            "train_cpu_seconds": train_cpu, "eval_seconds": report["eval_seconds"], "gem_projections": report["gem_projections"],
            "qp_fallbacks": report["qp_fallbacks"], "skipped_steps": sum(report["skipped_steps"].values())}


# -- Avalanche ------------------------------------------------------------------------------------

def avalanche_benchmark(stream):
    from avalanche.benchmarks import tensors_benchmark  # deprecated alias kept in 0.6; builds task-aware sets

    return tensors_benchmark(
        train_tensors=[(b.train.x, b.train.labels) for b in stream.buckets],
        test_tensors=[(b.test.x, b.test.labels) for b in stream.buckets],
        task_labels=[0] * len(stream),
    )


def peer_strategy(strategy: str, model, args, num_buckets: int, storage_policy=None):
    """`storage_policy`: replay's memory (None: as `--peer-replay-storage` says)."""
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training import AGEM, GEM, Naive, Replay
    from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
    from avalanche.training.storage_policy import ReservoirSamplingBuffer

    evaluator = EvaluationPlugin(accuracy_metrics(experience=True), loggers=[], collect_all=False)
    common = dict(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=args.lr),
                  criterion=torch.nn.CrossEntropyLoss(), train_mb_size=args.batch_size,
                  train_epochs=args.epochs, eval_mb_size=EVAL_MB, device="cpu", evaluator=evaluator,
                  eval_every=-1)
    if strategy == "naive":
        return Naive(**common)
    if strategy == "replay-defaults":
        return Replay(mem_size=args.replay_capacity, **common)
    if strategy == "replay":
        if args.peer_replay_storage == "balanced":  # Avalanche's own default: ExperienceBalancedBuffer
            return Replay(mem_size=args.replay_capacity, **common)
        # Replay is SupervisedTemplate + ReplayPlugin; the plugin takes the storage policy.
        # batch_size_mem defaults to train_mb_size: incoming batch + an equally sized memory batch.
        plugin = ReplayPlugin(mem_size=args.replay_capacity,
                              storage_policy=storage_policy if storage_policy is not None
                              else ReservoirSamplingBuffer(args.replay_capacity))
        return Naive(plugins=[plugin], **common)
    if strategy == "gem":
        return GEM(patterns_per_exp=args.memory_per_bucket, memory_strength=args.memory_strength, **common)
    if strategy == "agem":
        return AGEM(patterns_per_exp=args.memory_per_bucket, sample_size=args.agem_sample_size, **common)
    raise ValueError(strategy)


def run_peer(stream, strategy: str, args, seed: int, shuffle: bool | None = None, storage_policy=None) -> dict:
    shuffle = (args.peer_shuffle or strategy == "replay-defaults") if shuffle is None else shuffle
    config = our_config(strategy, args, seed, len(stream))
    model = build_model(config.model, stream.input_shape, stream.num_classes)
    model.load_state_dict(initial_state(config, stream))
    bench = avalanche_benchmark(stream)
    seed_everything(seed)
    strat = peer_strategy(strategy, model, args, len(stream), storage_policy)
    n = len(stream)
    keys = [f"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp{j:03d}" for j in range(n)]

    eval_seconds = 0.0

    def row() -> list[float]:
        nonlocal eval_seconds
        t0 = time.perf_counter()
        strat.eval(bench.test_stream)
        eval_seconds += time.perf_counter() - t0
        last = strat.evaluator.get_last_metrics()
        return [float(last[k]) for k in keys]

    b = row()
    R, train_seconds, train_cpu = [], 0.0, 0.0
    for exp in bench.train_stream:
        t0, c0 = time.perf_counter(), time.thread_time()
        strat.train(exp, eval_streams=[], shuffle=shuffle)
        train_seconds += time.perf_counter() - t0
        train_cpu += time.thread_time() - c0
        R.append(row())
    # Cross-check Avalanche's reported last row against a direct forward pass of its model.
    with torch.no_grad():
        model = strat.model.eval()
        direct = [float((model(bk.test.x).argmax(1) == bk.test.labels).float().mean()) for bk in stream.buckets]
    R, b = np.array(R), np.array(b)
    return {"R": R.tolist(), "b": b.tolist(), **gem_metrics(R, b), "train_seconds": train_seconds,
            "train_cpu_seconds": train_cpu, "eval_seconds": eval_seconds, "last_row_check": float(np.max(np.abs(np.array(direct) - R[-1])))}


# -- the equivalence checks: the same randomness on both sides ---------------------------------------

def max_diff(ours: dict, peer: dict) -> dict:
    """The largest differences of the two accuracy matrices (R) and initial rows (b), and both ACCs."""
    diff = {k: float(np.nanmax(np.abs(np.array(ours[k]) - np.array(peer[k])))) for k in ("R", "b")}
    return {"max_abs_diff_R": diff["R"], "max_abs_diff_b": diff["b"], "acc_ours": ours["acc"], "acc_peer": peer["acc"]}


def naive_equivalence(stream, args, seed: int) -> dict:
    """Naive fine-tuning, both unshuffled: identical batches from identical weights."""
    return max_diff(run_ours(stream, "naive", args, seed, shuffle=False),
                    run_peer(stream, "naive", args, seed, shuffle=False))


@contextlib.contextmanager
def ours_in_slot_order(memories: list):
    """For the replay check, while it lasts: our replay walks its memory in slot order (every pass), as the
    peer's unshuffled memory loader walks its memory, and after each bucket the memory's contents, as
    (bucket, index in the bucket) per slot, are appended to `memories`."""
    pass_order, end_bucket = ReplayBuffer.pass_order, Learner.end_bucket

    def recording_end_bucket(self, bucket, bucket_size=None):
        row = end_bucket(self, bucket, bucket_size)
        n = self.buffer.size
        memories.append(list(zip(self.buffer.bucket[:n].tolist(), self.buffer.ids[:n].tolist())))
        return row

    ReplayBuffer.pass_order = lambda self, generator: torch.arange(self.size)
    Learner.end_bucket = recording_end_bucket
    try:
        yield memories
    finally:
        ReplayBuffer.pass_order, Learner.end_bucket = pass_order, end_bucket


def keep_ours(memories: list, max_size: int):
    """A peer storage policy that keeps, after experience j, exactly the memories ours held after bucket j
    (`memories[j]`, from ours_in_slot_order), in our slot order."""
    from avalanche.benchmarks.utils.utils import concat_datasets
    from avalanche.training.storage_policy import ExemplarsBuffer

    class KeepOurs(ExemplarsBuffer):
        def __init__(self):
            super().__init__(max_size)
            self.seen = []  # every experience's dataset so far

        def post_adapt(self, agent, exp):
            self.seen.append(exp.dataset)
            start = np.cumsum([0] + [len(d) for d in self.seen])  # of each experience in their concatenation
            held = memories[len(self.seen) - 1]
            self.buffer = concat_datasets(self.seen).subset([int(start[b] + i) for b, i in held])

        def resize(self, strategy, new_size):
            self.max_size = new_size

    return KeepOurs()


def replay_equivalence(stream, args, seed: int) -> dict:
    """Replay, both unshuffled, the peer keeping our memories and both walking them in the same order
    (the module's docstring): identical batches, memory batches and weights."""
    args = argparse.Namespace(**{**vars(args), "our_replay_retention": "reservoir-end", "peer_replay_storage": "reservoir"})
    with ours_in_slot_order([]) as memories:
        ours = run_ours(stream, "replay", args, seed, shuffle=False)
    return max_diff(ours, run_peer(stream, "replay", args, seed, shuffle=False,
                                   storage_policy=keep_ours(memories, args.replay_capacity)))


# -- the study ------------------------------------------------------------------------------------

def peer_machine() -> dict:
    import avalanche

    return {**machine(), "avalanche": avalanche.__version__}


def summarise(runs: list[dict], streams, strategies) -> list[dict]:
    rows = []
    for s in streams:
        for st in strategies:
            row = {"stream": s, "strategy": st}
            for lib in ("ours", "peer"):
                rs = [r for r in runs if r["stream"] == s and r["strategy"] == st and r["library"] == lib]
                for k in ("acc", "bwt", "fwt", "train_seconds", "train_cpu_seconds"):
                    row[f"{k}_{lib}"] = median([r[k] for r in rs])
                row[f"train_seconds_{lib}_all"] = [r["train_seconds"] for r in rs]
                row[f"acc_{lib}_all"] = [r["acc"] for r in rs]
            row["time_ratio"] = row["train_seconds_ours"] / row["train_seconds_peer"]
            row["cpu_ratio"] = row["train_cpu_seconds_ours"] / row["train_cpu_seconds_peer"]
            # Ours and the peer ran back to back in each repetition, under much the same outside load:
            # the ratio within each pair is the statistic least moved by that load.
            ours = {r["rep"]: r for r in runs if r["stream"] == s and r["strategy"] == st and r["library"] == "ours"}
            peer = {r["rep"]: r for r in runs if r["stream"] == s and r["strategy"] == st and r["library"] == "peer"}
            pairs = [ours[k]["train_seconds"] / peer[k]["train_seconds"] for k in sorted(ours) if k in peer]
            row["paired_time_ratios"] = pairs
            row["paired_time_ratio_median"] = median(pairs)
            cpu_pairs = [ours[k]["train_cpu_seconds"] / peer[k]["train_cpu_seconds"] for k in sorted(ours) if k in peer]
            row["paired_cpu_ratios"] = cpu_pairs
            row["paired_cpu_ratio_median"] = median(cpu_pairs)
            row["time_ratio_best"] = min(row["train_seconds_ours_all"]) / min(row["train_seconds_peer_all"])
            row["acc_diff"] = row["acc_ours"] - row["acc_peer"]
            row["goal_acc_met"] = row["acc_ours"] >= row["acc_peer"]
            row["goal_time_met"] = row["time_ratio"] <= 0.5 and row["paired_time_ratio_median"] <= 0.5
            rows.append(row)
    return rows


def table(rows: list[dict], reps: int) -> str:
    lines = [
        "| stream | strategy | ACC ours / peer | BWT ours / peer | FWT ours / peer | train s ours / peer "
        "| ours/peer (medians) | ours/peer (paired) | CPU s ours / peer | ours/peer CPU (paired) | ACC ≥ peer "
        "| time ≤ ½ |",
        "|" + "---|" * 12,
    ]
    for r in rows:
        lines.append(
            f"| {r['stream']} | {r['strategy']} | {r['acc_ours']:.3f} / {r['acc_peer']:.3f} "
            f"| {r['bwt_ours']:+.3f} / {r['bwt_peer']:+.3f} | {r['fwt_ours']:+.3f} / {r['fwt_peer']:+.3f} "
            f"| {r['train_seconds_ours']:.2f} / {r['train_seconds_peer']:.2f} | **{r['time_ratio']:.2f}** "
            f"| {r['paired_time_ratio_median']:.2f} | {r['train_cpu_seconds_ours']:.2f} / {r['train_cpu_seconds_peer']:.2f} "
            f"| {r['paired_cpu_ratio_median']:.2f} "
            f"| {'yes' if r['goal_acc_met'] else 'no'} ({r['acc_diff'] * 100:+.1f} pt) "
            f"| {'yes' if r['goal_time_met'] else 'no'} |")
    lines += ["", (
        f"Medians over {reps} repetitions; seeds differ per repetition and are the same for both libraries. "
        "train s: wall seconds of training. ours/peer (medians): ratio of the median times; (paired): median of the "
        "per-repetition ratios of the two back-to-back runs. CPU s: CPU seconds of the training thread (one torch "
        "thread); its paired ratio is the statistic least moved by other load on the machine. ACC ≥ peer compares the medians; time ≤ ½ asks both ratios to be at most 0.5.")]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=5, help="repetitions per (stream, strategy, library)")
    p.add_argument("--streams", nargs="+", default=list(STREAMS))
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--replay-capacity", type=int, default=500, help="replay memory, samples in total")
    p.add_argument("--memory-per-bucket", type=int, default=256, help="GEM / A-GEM memories per bucket")
    p.add_argument("--agem-sample-size", type=int, default=256)
    p.add_argument("--memory-strength", type=float, default=0.5)
    p.add_argument("--peer-replay-storage", choices=("reservoir", "balanced"), default="reservoir",
                   help="Avalanche replay storage policy: ReservoirSamplingBuffer (closest to ours) or its "
                        "default ExperienceBalancedBuffer")
    p.add_argument("--our-replay-retention", choices=("reservoir-end", "reservoir", "per-bucket"),
                   default="reservoir-end",
                   help="our replay memory: reservoir-end (a reservoir written at each bucket's end, so a bucket "
                        "replays finished buckets only: the schedule of Avalanche's ReservoirSamplingBuffer; the "
                        "default here), reservoir (online, our engine's default: a bucket also replays its own "
                        "samples) or per-bucket (filled at each bucket's end and split evenly over buckets, what "
                        "Avalanche's default ExperienceBalancedBuffer does)")
    p.add_argument("--peer-shuffle", action=argparse.BooleanOptionalAction, default=True,
                   help="both libraries shuffle each bucket (their defaults: ours seeded per pass, the peer's "
                        "per experience). Off: both train each bucket's first pass in the stream's own order, the "
                        "same batches. replay-defaults always shuffles")
    p.add_argument("--section", default=SECTION, help="name of the BENCHMARKS.md section to rewrite")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads for both libraries (0: torch's default). A batch of 10 through "
                        "a 64-100-100-10 MLP gains nothing from intra-op parallelism, and on a shared 2-core "
                        "machine a second OpenMP thread makes every step wait for a busy core")
    p.add_argument("--no-warmup", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "peer_avalanche.json")
    p.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md",
                   help="file whose peer_avalanche section is rewritten ('-' for none)")
    args = p.parse_args(argv)

    warnings.filterwarnings("ignore")  # Avalanche's deprecation and "no loggers" warnings;
    warnings.showwarning = lambda *a, **k: None  # its @deprecated re-enables them on every call
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    info = peer_machine()
    print(f"machine: {info['nproc']} cores, {info['cpu_model']}; torch {info['torch']} "
          f"({info['torch_threads']} threads); avalanche {info['avalanche']}", file=sys.stderr)
    streams = {s: build_stream(s, StreamOptions(seed=0)) for s in args.streams}

    # Equivalence: identical batches (Avalanche unshuffled, our first pass keeps stream order).
    s0 = streams[args.streams[0]]
    eq = {"stream": args.streams[0], "strategy": "naive", "peer_shuffle": False,
          **naive_equivalence(s0, args, args.seed)}
    print(f"equivalence (naive, identical batches): max |R_ours - R_peer| = {eq['max_abs_diff_R']:.4f}, "
          f"|b| diff {eq['max_abs_diff_b']:.4f}", file=sys.stderr)
    replay_eq = {"stream": args.streams[0], "strategy": "replay", "peer_shuffle": False,
                 **replay_equivalence(s0, args, args.seed)}
    print(f"equivalence (replay, identical batches and memories): max |R_ours - R_peer| = "
          f"{replay_eq['max_abs_diff_R']:.4f}, |b| diff {replay_eq['max_abs_diff_b']:.4f}", file=sys.stderr)

    if not args.no_warmup:
        small = build_stream(args.streams[0], StreamOptions(seed=0, samples_per_bucket=100))
        for st in args.strategies:
            run_ours(small, st, args, args.seed)
            run_peer(small, st, args, args.seed)

    runs = []
    k = 0
    for rep in range(args.reps):
        seed = args.seed + rep
        for sname, stream in streams.items():
            for st in args.strategies:
                order = ("ours", "peer") if k % 2 == 0 else ("peer", "ours")
                k += 1
                for lib in order:
                    load_before = os.getloadavg()[0]
                    result = run_ours(stream, st, args, seed) if lib == "ours" else run_peer(stream, st, args, seed)
                    runs.append({"rep": rep, "seed": seed, "stream": sname, "strategy": st, "library": lib,
                                 "first": lib == order[0], "loadavg_1min_before": load_before,
                                 "loadavg_1min_after": os.getloadavg()[0], **result})
                    print(f"rep {rep + 1}/{args.reps} {sname:16s} {st:6s} {lib:4s}: ACC {result['acc']:.3f} "
                          f"BWT {result['bwt']:+.3f} FWT {result['fwt']:+.3f} train {result['train_seconds']:.2f}s "
                          f"(cpu {result['train_cpu_seconds']:.2f}s)",
                          file=sys.stderr)

    out = {
        "study": "peer comparison: cl_engine vs Avalanche",
        "command": command_line(argv),
        "machine": info,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "timed": {"ours": "run_stream train_seconds: observe loop (batch fetch + step) + end-of-bucket consolidation",
                  "peer": "wall time of strategy.train(exp) per experience, minimal evaluator (experience "
                          "accuracy, no loggers); eval outside the timer"},
        "equivalence_check": eq,
        "replay_equivalence_check": replay_eq,
        "runs": runs,
        "wall_seconds": time.perf_counter() - t_start,
    }
    publish(out, args.out, args.markdown, args.section)
    return 0


def publish(out: dict, path: Path, markdown: Path, section: str) -> None:
    """Summarise the runs, print the table, write the JSON and the BENCHMARKS.md section."""
    st = out["settings"]
    rows = summarise(out["runs"], st["streams"], st["strategies"])
    out["summary"] = rows
    md = table(rows, st["reps"])
    print(md)
    write_results(out, path)
    if str(markdown) == "-":
        return
    info, eq = out["machine"], out["equivalence_check"]
    loads = [r["loadavg_1min_before"] for r in out["runs"] if "loadavg_1min_before" in r]
    body = "\n".join([
        f"### Peer comparison: cl_engine vs Avalanche (`benchmarks/peer_avalanche.py`"
        f"{', ' + section if section != SECTION else ''})",
        "",
        f"Machine: {info['nproc']} cores, {info['cpu_model']}, Python {info['python']}, torch {info['torch']} "
        f"({info['torch_threads']} torch thread(s)), avalanche-lib {info['avalanche']}; both libraries in one process"
        + (f"; 1-minute load average during the runs {min(loads):.1f}–{max(loads):.1f} "
           f"(median {statistics.median(loads):.1f}) from other jobs on the machine" if loads else "") + ".",
        "",
        f"Command: `{out['command']}` ({out['wall_seconds'] / 60:.0f} min)",
        "",
        f"Settings: MLP 64-100-100-10, SGD lr {st['lr']}, batch {st['batch_size']}, {st['epochs']} epoch(s); replay "
        f"memory {st['replay_capacity']} (ours: {st['our_replay_retention']}; peer storage: "
        f"{'ReservoirSamplingBuffer' if st['peer_replay_storage'] == 'reservoir' else 'ExperienceBalancedBuffer'}); "
        f"data order: {'each bucket shuffled by both (ours seeded per pass, the peer per experience)' if st['peer_shuffle'] else 'the stream order for both'}; "
        "replay-defaults: each library's replay at its defaults with the same memory size (ours reservoir-end, "
        "the peer's Replay: ExperienceBalancedBuffer, shuffled); "
        f"GEM/A-GEM {st['memory_per_bucket']} memories per bucket, A-GEM sample {st['agem_sample_size']}, GEM margin "
        f"{st['memory_strength']}. Time = training only (evaluation excluded for both).",
        "",
        md,
        "",
        f"Equivalence check (naive, identical batches and weights): max |R_ours − R_peer| = "
        f"{eq['max_abs_diff_R']:.4f}.",
        *replay_equivalence_text(out.get("replay_equivalence_check")),
    ])
    write_markdown(markdown, body, section)


def replay_equivalence_text(check: dict | None) -> list[str]:
    """The replay check's line of the section (none for results recorded before it existed)."""
    if check is None:
        return []
    return ["", (
        "Equivalence check (replay, the randomness shared: both unshuffled, the peer keeping exactly the memories "
        "ours keeps, both walking them in slot order, so identical batches, memory batches and weights): "
        f"max |R_ours − R_peer| = {check['max_abs_diff_R']:.4f}.")]


def render(argv=None) -> int:
    """Re-summarise a results file (e.g. after a change to the table) without running anything."""
    p = argparse.ArgumentParser(description="re-render a peer_avalanche results JSON")
    p.add_argument("results", type=Path)
    p.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument("--section", default=None)
    args = p.parse_args(argv)
    out = json.loads(args.results.read_text())
    publish(out, args.results, args.markdown, args.section or out["settings"].get("section", SECTION))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "render":
        sys.exit(render(sys.argv[2:]))
    sys.exit(main())
