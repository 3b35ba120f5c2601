"""Where cl_engine's training time goes, on the peer benchmark's run (benchmarks/peer_avalanche.py).

    .venv-bench/bin/python benchmarks/profile_engine.py                      # all four strategies
    .venv-bench/bin/python benchmarks/profile_engine.py --strategies gem --top 30

For each strategy: one warm-up run, one plain run (its train time), then run_stream under
cProfile with the thread's CPU clock as timer (one torch thread, as the peer benchmark; a CPU
clock keeps other load on a shared machine out of the numbers), printing the functions with the
most own and the most cumulative CPU time; for GEM also its observe against its floor (one forward
and backward over memories and batch), step by step. Writes benchmarks/results/profile_engine.json
with the top entries. Reads only; changes nothing in cl_engine.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "proto")]  # this checkout, whatever the venv has installed
sys.path.insert(0, str(ROOT / "benchmarks"))

from cl_engine import build_stream, run_stream  # noqa: E402
from cl_engine.learner import Learner  # noqa: E402
from cl_engine.schedule import bucket_batches  # noqa: E402
from cl_engine.streams import StreamOptions  # noqa: E402
from peer_avalanche import STRATEGIES, our_config  # noqa: E402


def top(stats: pstats.Stats, key: str, n: int) -> list[dict]:
    stats.sort_stats(key)
    rows = []
    for func in stats.fcn_list[:n]:
        cc, nc, tt, ct, _ = stats.stats[func]
        rows.append({"function": f"{Path(func[0]).name}:{func[1]}({func[2]})", "calls": nc,
                     "own_s": round(tt, 4), "cumulative_s": round(ct, 4)})
    return rows


def gem_against_floor(stream, config, batch_size: int) -> dict:
    """GEM's observe over the stream against its floor, timed step by step in turn: one forward and
    autograd.grad of the same model over every past bucket's memories and the batch in one batch."""
    learner = Learner(config, stream.input_shape, stream.num_classes)
    params = [p for p in learner.model.parameters() if p.requires_grad]
    observe = floor = 0.0
    for i, bucket in enumerate(stream.buckets):
        past = [b for b in learner.buffer.buckets_held() if b != i]
        xm, ym = learner.buffer.get(learner.buffer.slots(torch.tensor(past))) if past else (None, None)
        for index in bucket_batches(len(bucket.train), batch_size, 1, config.seed, i):
            x, y = bucket.train.batch(index, train=True)
            xs, ys = (torch.cat([xm, x]), torch.cat([ym, y])) if past else (x, y)
            t0 = time.thread_time()
            torch.autograd.grad(F.cross_entropy(learner.model(xs), ys), params)
            t1 = time.thread_time()
            learner.observe(x, y, i)
            observe, floor = observe + time.thread_time() - t1, floor + t1 - t0
        learner.end_bucket(i)
    return {"observe_cpu_seconds": observe, "floor_cpu_seconds": floor, "observe_over_floor": observe / floor}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stream", default="digits-rotated")
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--replay-capacity", type=int, default=500)
    p.add_argument("--memory-per-bucket", type=int, default=256)
    p.add_argument("--agem-sample-size", type=int, default=256)
    p.add_argument("--memory-strength", type=float, default=0.5)
    p.add_argument("--our-replay-retention", choices=("reservoir", "per-bucket"), default="reservoir")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "profile_engine.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    stream = build_stream(args.stream, StreamOptions(seed=0))
    out = {"stream": args.stream, "threads": torch.get_num_threads(), "torch": torch.__version__, "strategies": {}}
    for st in args.strategies:
        config = our_config(st, args, 0, len(stream))
        run_stream(stream, config, args.batch_size, args.epochs, progress=False)  # warm-up
        c0 = time.thread_time()
        plain_report = run_stream(stream, config, args.batch_size, args.epochs, progress=False)
        plain = plain_report["train_seconds"]
        cpu_all = time.thread_time() - c0  # incl. evaluation
        prof = cProfile.Profile(time.thread_time)  # CPU time of this thread: robust to other load
        prof.enable()
        report = run_stream(stream, config, args.batch_size, args.epochs, progress=False)
        prof.disable()
        stats = pstats.Stats(prof, stream=io.StringIO())
        steps = report["batches_trained"]
        print(f"\n=== {st}: train {plain:.2f}s wall without profiler ({plain / steps * 1e3:.2f} ms/step over {steps} "
              f"steps; run_stream CPU incl. evaluation {cpu_all:.2f}s); profile times below are CPU seconds ===")
        own, cum = top(stats, "tottime", args.top), top(stats, "cumulative", args.top)
        print(f"{'own s':>8} {'cum s':>8} {'calls':>8}  function (by own time)")
        for r in own:
            print(f"{r['own_s']:8.3f} {r['cumulative_s']:8.3f} {r['calls']:8d}  {r['function']}")
        print(f"{'own s':>8} {'cum s':>8} {'calls':>8}  function (by cumulative time)")
        for r in cum:
            print(f"{r['own_s']:8.3f} {r['cumulative_s']:8.3f} {r['calls']:8d}  {r['function']}")
        if st == "gem":
            against = gem_against_floor(stream, config, args.batch_size)
            print(f"GEM observe {against['observe_cpu_seconds']:.2f}s against its floor "
                  f"{against['floor_cpu_seconds']:.2f}s (CPU, every step): {against['observe_over_floor']:.2f}x")
            out["gem_against_floor"] = against
        out["strategies"][st] = {"train_seconds": plain, "steps": steps, "ms_per_step": plain / steps * 1e3,
                                 "run_stream_cpu_seconds_incl_eval": cpu_all, "profile_timer": "thread_time", "by_own_time": own,
                                 "by_cumulative_time": cum}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
