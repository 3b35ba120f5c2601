"""Conv models on images (issue 24): the engine against the floor and the peer, side by side.

    PYTHONPATH=. /work/venv-bench/bin/python benchmarks/conv_images.py --quick   # ~10 min on 2 shared cores
    PYTHONPATH=. /work/venv-bench/bin/python benchmarks/conv_images.py           # the issue's size: hours here
    .venv/bin/python benchmarks/conv_images.py --clear PATH                      # a CLEAR-layout folder (engine, floor)
    ... --make-clear 10 30 --clear /tmp/clear10 --models resnet18 --strategies replay --batch-sizes 64 \
        --retain-ratio 0.05                          # CLEAR-10's shape, written first: 10 buckets × 11 classes × 30

Writes benchmarks/results/conv_images.json (`--out`), prints the table and rewrites the
`conv_images` section of BENCHMARKS.md (`--markdown -`: none).

Three runners train the same stream with the same model from the same initial weights:
- engine: `run_stream` (cl_engine's learner: views, step guard, memory, bucket ends);
- floor: a plain PyTorch loop with the engine's own model, `torch.optim.SGD`, and the very batches
  the engine trains on (cl_engine.schedule's order). Replay: each step the incoming batch and an
  equally large uniform draw from a reservoir of `--replay-capacity` written at each bucket's end.
  A-GEM: a forward and backward on `--agem-sample-size` memories, the batch's, one dot product and
  the projection. GEM: a forward and backward per past bucket's memories, the batch's, and the
  paper's dual QP (cl_engine.projection.solve_gem_dual) when a constraint is violated. Memories
  per bucket are `--memory-per-bucket` random samples of the bucket. So engine/floor is our overhead;
- peer: Avalanche 0.6 with the same model, through peer_avalanche.py's helpers (the same memory
  sizes and policies as there), when avalanche is importable (run from /work/venv-bench).

Streams: `synthetic` (default): `--buckets` × `--samples` float 3×32×32 images of 10 classes (a
class pattern plus noise, each bucket shifts colour and contrast), `--test-samples` held out per
bucket, the same tensors for all three runners. `--clear PATH`: a CLEAR-layout folder (`--make-clear`
writes one first, cl_engine.streams.clear_fixture: CLEAR-10's 11 classes, photos of 320×240 to 640×480),
decoded once into memory as the learner stores it (uint8 at 32 px; decoding is not timed), then trained as
an image stream is: ImageNet normalisation, crop and flip at every use, streaming protocol (each bucket
tested on its own images). Engine and floor only: the peer reads float tensors and would need its own
image pipeline. `--retain-ratio R`: replay keeps a random R of each bucket (the engine's ratio retention;
the floor the same) instead of the reservoir, as the CLEAR study's "replay 5%"; no peer (its replay here
is the reservoir).

Timed: training only. Thread CPU seconds (the statistic other jobs on a shared machine move
least; one torch thread) beside wall seconds. Engine: run_stream's training (observe loop and
bucket ends) less its evaluations; `consolidate` is the bucket ends' part. Floor: its loop and its
bucket-end memory writes. Peer: `strategy.train` per experience. Order: per repetition and
configuration the three run back to back, the order rotated each time; tables show medians.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
import types
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "proto")]  # this checkout, whatever the venv has installed

from benchmarks.common import command_line, entry_point, machine, machine_line, median, write_markdown, write_results  # noqa: E402
from benchmarks.peer_avalanche import initial_state, our_config, run_ours, run_peer, seed_everything  # noqa: E402
from cl_engine.learner import Learner  # noqa: E402
from cl_engine.models import build_model  # noqa: E402
from cl_engine.precision import model_autocast, prepare  # noqa: E402
from cl_engine.projection import solve_gem_dual  # noqa: E402
from cl_engine.run import with_stream_defaults  # noqa: E402
from cl_engine.schedule import bucket_batches  # noqa: E402
from cl_engine.streams import Bucket, StoredSet, Stream, StreamOptions, TensorSet, build_stream, stored_batch  # noqa: E402
from cl_engine.streams.clear_fixture import CLEAR10_CLASSES, write_clear_fixture  # noqa: E402
from cl_engine.views import InputView  # noqa: E402

SECTION = "conv_images"
STRATEGIES = ("naive", "replay", "gem", "agem")
RUNNERS = ("engine", "floor", "peer")
CLASSES = 10
FULL = dict(buckets=5, samples=1000, test_samples=200, replay_capacity=500, memory_per_bucket=100,
            agem_sample_size=100, reps=3)
QUICK = dict(buckets=3, samples=200, test_samples=100, replay_capacity=100, memory_per_bucket=40,
             agem_sample_size=40, reps=2)
# --make-clear's photos, (width, height): camera and phone sizes between 320×240 and 640×480, both orientations
CLEAR_SIZES = ((320, 240), (240, 320), (480, 360), (360, 480), (500, 375), (500, 500), (640, 480), (480, 640))


# -- the stream -----------------------------------------------------------------------------------

def synthetic_stream(buckets: int, samples: int, test_samples: int, seed: int = 0, px: int = 32) -> Stream:
    """10 classes, each a fixed random low-frequency pattern; a sample is its class's pattern plus noise,
    and each bucket shifts the colour balance and contrast (a drifting domain), values in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    patterns = F.interpolate(torch.rand(CLASSES, 3, 8, 8, generator=g), size=(px, px), mode="bilinear")
    out = []
    for b in range(buckets):
        tint = 0.6 + 0.8 * torch.rand(1, 3, 1, 1, generator=g)
        contrast = 0.5 + torch.rand(1, generator=g)

        def draw(n):
            y = torch.randint(0, CLASSES, (n,), generator=g)
            x = (patterns[y] - 0.5) * contrast + 0.5
            x = (x * tint + 0.25 * torch.randn(n, 3, px, px, generator=g)).clamp(0, 1)
            return TensorSet(x, y)

        out.append(Bucket(draw(samples), draw(test_samples), f"b{b}"))
    return Stream("synthetic-images", out, (3, px, px), CLASSES, info={"samples_without_upload_time": 0})


def decoded_once(stream: Stream) -> Stream:
    """An image stream with every bucket decoded once into memory as the learner stores it (uint8 pixels at the
    stream's size, resized and centre cropped): every runner trains on these same tensors (and views and augments
    them as the stream's learner defaults say), and none times JPEG decoding."""
    def stored(samples):
        return StoredSet(*stored_batch(samples, torch.arange(len(samples))))

    buckets = []
    for b in stream.buckets:
        train = stored(b.train)
        buckets.append(Bucket(train, train if b.test is b.train else stored(b.test), b.name))
    return dataclasses.replace(stream, buckets=buckets)


# -- the floor ------------------------------------------------------------------------------------

def _loss(model, x, y) -> torch.Tensor:
    with model_autocast(model):
        return F.cross_entropy(model(x).float(), y)


def _grads(model, x, y) -> torch.Tensor:
    """The mean loss's gradient, flattened, left in .grad too."""
    model.zero_grad(set_to_none=True)
    _loss(model, x, y).backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def _set_grads(model, flat: torch.Tensor) -> None:
    start = 0
    for p in model.parameters():
        p.grad.copy_(flat[start: start + p.numel()].view_as(p))
        start += p.numel()


def run_floor(stream: Stream, strategy: str, args, seed: int) -> dict:
    config = with_stream_defaults(our_config(strategy, args, seed, len(stream)), stream)
    model = build_model(config.model, stream.input_shape, stream.num_classes)
    model.load_state_dict(initial_state(config, stream))
    prepare(model, config.precision, config.channels_last)  # the same arithmetic and layout as the engine's
    model.train()
    view = InputView(config.augment, config.uint8_inputs)
    crops = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(seed)
    mem_x, mem_y, per_bucket, seen = None, None, [], 0
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    for i, bucket in enumerate(stream.buckets):
        n = len(bucket.train)
        for index in bucket_batches(n, args.batch_size, 1, seed, i):
            x, y = stored_batch(bucket.train, index)
            x = view.training(x, crops)
            if strategy == "replay" and mem_x is not None:
                draw = torch.randint(len(mem_y), (len(y),), generator=g)
                x, y = torch.cat([x, view.training(mem_x[draw], crops)]), torch.cat([y, mem_y[draw]])
            if strategy in ("naive", "replay"):
                opt.zero_grad(set_to_none=True)
                _loss(model, x, y).backward()
            elif strategy == "agem" and per_bucket:
                mx, my = torch.cat([m[0] for m in per_bucket]), torch.cat([m[1] for m in per_bucket])
                draw = torch.randperm(len(my), generator=g)[: args.agem_sample_size]
                ref = _grads(model, view.evaluation(mx[draw]), my[draw])
                grad = _grads(model, x, y)
                dot = grad @ ref
                if dot < 0:
                    _set_grads(model, grad - dot / (ref @ ref) * ref)
            elif strategy == "gem" and per_bucket:
                G = torch.stack([_grads(model, view.evaluation(mx), my) for mx, my in per_bucket])
                grad = _grads(model, x, y)
                Gg = G @ grad
                if bool((Gg < 0).any()):
                    gram = (G @ G.T).double().numpy()
                    v = solve_gem_dual(gram, Gg.double().numpy(), args.memory_strength, 1e-3)
                    _set_grads(model, G.T @ torch.from_numpy(v).float() + grad)
            else:
                _grads(model, x, y)
            opt.step()
        # the bucket's end: write the memory (uncounted work such as evaluation is not done here)
        xs, ys = stored_batch(bucket.train, torch.arange(n))
        if strategy == "replay" and args.retain_ratio:  # the engine's ratio retention: a random share of each bucket
            keep = torch.randperm(n, generator=g)[: max(1, round(args.retain_ratio * n))]
            mem_x = xs[keep] if mem_x is None else torch.cat([mem_x, xs[keep]])
            mem_y = ys[keep] if mem_y is None else torch.cat([mem_y, ys[keep]])
        elif strategy == "replay":
            mem_x, mem_y, seen = _reservoir(mem_x, mem_y, xs, ys, seen, args.replay_capacity, g)
        elif strategy in ("gem", "agem"):
            keep = torch.randperm(n, generator=g)[: args.memory_per_bucket]
            per_bucket.append((xs[keep], ys[keep]))
    train_cpu, train_wall = time.thread_time() - cpu0, time.perf_counter() - wall0
    model.eval()
    with torch.no_grad():
        last = []
        for b in stream.buckets:
            x, y = b.test.batch(torch.arange(len(b.test)))
            with model_autocast(model):
                last.append(float((model(view.evaluation(x)).argmax(1) == y).float().mean()))
    return {"train_seconds": train_wall, "train_cpu_seconds": train_cpu, "acc": float(np.mean(last)),
            "last_row": last}


def _reservoir(mem_x, mem_y, x, y, seen: int, capacity: int, g: torch.Generator):
    """A reservoir of `capacity` over everything seen, written with a bucket's samples x, y."""
    if mem_x is None:
        mem_x, mem_y = x[:0].clone(), y[:0].clone()
    for k in range(len(y)):
        seen += 1
        if len(mem_y) < capacity:
            mem_x, mem_y = torch.cat([mem_x, x[k: k + 1]]), torch.cat([mem_y, y[k: k + 1]])
        else:
            j = int(torch.randint(seen, (1,), generator=g))
            if j < capacity:
                mem_x[j], mem_y[j] = x[k], y[k]
    return mem_x, mem_y, seen


# -- evaluation batch size ------------------------------------------------------------------------

def eval_sweep(models, batches=(32, 64, 128, 512), images=512, reps=2) -> list[dict]:
    """Inference images per thread-CPU second of each model at each batch size, eval mode, under
    no_grad and inference_mode (best of `reps`): what the learner's evaluation batch is chosen by."""
    rows = []
    x = torch.rand(images, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for name in models:
        model = build_model(name, (3, 32, 32), CLASSES).eval()
        for mode, context in (("no_grad", torch.no_grad), ("inference_mode", torch.inference_mode)):
            for batch in batches:
                best = math.inf
                for _ in range(reps):
                    c0 = time.thread_time()
                    with context():
                        for i in range(0, images, batch):
                            model(x[i: i + batch])
                    best = min(best, time.thread_time() - c0)
                rows.append({"model": name, "mode": mode, "batch": batch, "images_per_cpu_s": images / best})
                print(f"{name:16s} {mode:14s} batch {batch:4d}: {images / best:7.0f} images/s", file=sys.stderr)
    return rows


# -- the study ------------------------------------------------------------------------------------

def peer_available() -> bool:
    try:
        import avalanche  # noqa: F401
    except ImportError:
        return False
    return True


class _Consolidation:
    """The engine's bucket-end consolidation seconds (Learner.seconds["consolidate"]) of the last learner
    run_stream built: Learner.end_bucket wrapped for the benchmark process only."""

    seconds = 0.0

    @classmethod
    def install(cls) -> None:
        if getattr(Learner.end_bucket, "_recorded", False):
            return
        original = Learner.end_bucket

        def end_bucket(self, *args, **kwargs):
            try:
                return original(self, *args, **kwargs)
            finally:
                cls.seconds = self.seconds["consolidate"]

        end_bucket._recorded = True
        Learner.end_bucket = end_bucket


def run_one(runner: str, stream: Stream, strategy: str, args, seed: int) -> dict:
    if runner == "floor":
        return run_floor(stream, strategy, args, seed)
    seed_everything(seed)
    if runner == "engine":
        _Consolidation.install()
        _Consolidation.seconds = 0.0
        return {**run_ours(stream, strategy, args, seed), "consolidate_seconds": _Consolidation.seconds}
    return run_peer(stream, strategy, args, seed)


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    keys = sorted({(r["model"], r["strategy"], r["batch_size"]) for r in runs},
                  key=lambda k: (k[0], STRATEGIES.index(k[1]), k[2]))
    for model, strategy, batch in keys:
        row = {"model": model, "strategy": strategy, "batch_size": batch}
        mine = [r for r in runs if (r["model"], r["strategy"], r["batch_size"]) == (model, strategy, batch)]
        for runner in RUNNERS:
            rs = [r for r in mine if r["runner"] == runner]
            if not rs:
                continue
            for k in ("train_cpu_seconds", "train_seconds", "acc"):
                row[f"{k}_{runner}"] = median([r[k] for r in rs])
            if runner == "engine":
                row["consolidate_seconds_engine"] = median([r["consolidate_seconds"] for r in rs])
                row["eval_seconds_engine"] = median([r["eval_seconds"] for r in rs])
        for other in ("floor", "peer"):
            if f"train_cpu_seconds_{other}" in row:
                row[f"cpu_ratio_{other}"] = row["train_cpu_seconds_engine"] / row[f"train_cpu_seconds_{other}"]
                row[f"wall_ratio_{other}"] = row["train_seconds_engine"] / row[f"train_seconds_{other}"]
        row["consolidate_share"] = row["consolidate_seconds_engine"] / row["train_seconds_engine"]
        rows.append(row)
    return rows


def _cell(row: dict, key: str, fmt: str = "{:.1f}") -> str:
    return fmt.format(row[key]) if key in row else "–"


def table(rows: list[dict]) -> str:
    lines = ["| model | strategy, batch | CPU s engine / floor / peer | engine / floor | engine / peer "
             "| wall s engine / floor / peer | bucket ends (share of training) | evaluation s | ACC engine / floor / peer |",
             "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['strategy']}, {r['batch_size']} "
            f"| {_cell(r, 'train_cpu_seconds_engine')} / {_cell(r, 'train_cpu_seconds_floor')} / {_cell(r, 'train_cpu_seconds_peer')} "
            f"| **{_cell(r, 'cpu_ratio_floor', '{:.2f}')}** | **{_cell(r, 'cpu_ratio_peer', '{:.2f}')}** "
            f"| {_cell(r, 'train_seconds_engine')} / {_cell(r, 'train_seconds_floor')} / {_cell(r, 'train_seconds_peer')} "
            f"| {r['consolidate_seconds_engine']:.2f} s ({r['consolidate_share'] * 100:.0f}%) "
            f"| {r['eval_seconds_engine']:.1f} "
            f"| {_cell(r, 'acc_engine', '{:.3f}')} / {_cell(r, 'acc_floor', '{:.3f}')} / {_cell(r, 'acc_peer', '{:.3f}')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"a size for a shared 2-core machine: {QUICK}")
    p.add_argument("--models", nargs="+", default=["reduced-resnet18"], choices=("reduced-resnet18", "resnet18"))
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[10, 64])
    p.add_argument("--runners", nargs="+", default=list(RUNNERS), choices=RUNNERS)
    for k in FULL:
        p.add_argument(f"--{k.replace('_', '-')}", type=int, default=None, help=f"default {FULL[k]} ({QUICK[k]} quick)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--memory-strength", type=float, default=0.5)
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="engine and floor (the peer stays fp32)")
    p.add_argument("--channels-last", action="store_true", help="engine and floor (the peer keeps NCHW)")
    p.add_argument("--clear", type=Path, default=None,
                   help="a CLEAR-layout folder instead of the synthetic stream (decoded once at 32 px; no peer)")
    p.add_argument("--make-clear", type=int, nargs=2, default=None, metavar=("BUCKETS", "PER_CLASS"),
                   help="first write --clear as a CLEAR-10-layout fixture (11 classes, photos of "
                        f"{CLEAR_SIZES[0][0]}×{CLEAR_SIZES[0][1]} to {CLEAR_SIZES[-2][0]}×{CLEAR_SIZES[-2][1]})")
    p.add_argument("--retain-ratio", type=float, default=None,
                   help="replay keeps this share of each bucket (the engine's ratio retention, random selection; the "
                        "floor the same) instead of a --replay-capacity reservoir; no peer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                   help="one small discarded run per runner and strategy first")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: a shared machine)")
    p.add_argument("--section", default=SECTION)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "conv_images.json")
    p.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument("--eval-sweep", action="store_true",
                   help="only measure inference speed by batch size (--models), writing --out")
    args = p.parse_args(argv)
    if args.eval_sweep:
        torch.set_num_threads(args.threads or torch.get_num_threads())
        t0 = time.perf_counter()
        rows = eval_sweep(args.models)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"study": "inference images per thread-CPU second by batch size",
                                        "command": command_line(argv), "machine": machine(), "rows": rows,
                                        "wall_seconds": time.perf_counter() - t0}, indent=1))
        return 0
    size = QUICK if args.quick else FULL
    for k, v in size.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    # what peer_avalanche's helpers read
    args.epochs, args.peer_replay_storage, args.our_replay_retention, args.peer_shuffle = 1, "reservoir", "reservoir-end", True
    warnings.filterwarnings("ignore")
    warnings.showwarning = lambda *a, **k: None
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.retain_ratio:
        args.our_replay_retention = "ratio"
    runners = [r for r in args.runners
               if r != "peer" or (peer_available() and args.clear is None and args.retain_ratio is None)]
    t_start = time.perf_counter()
    info = machine()
    fixture = None
    if args.make_clear:
        if args.clear is None or (args.clear.exists() and any(args.clear.iterdir())):
            p.error("--make-clear writes the folder --clear names, which must be given and empty or absent")
        fixture = write_clear_fixture(args.clear, args.make_clear[0], CLEAR10_CLASSES, args.make_clear[1], CLEAR_SIZES,
                                      seed=args.seed, workers=os.cpu_count() or 1)
    if args.clear:
        t0 = time.perf_counter()
        stream = decoded_once(build_stream(f"clear:{args.clear}", StreamOptions(image_size=32)))
        print(f"decoded {args.clear} in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    else:
        stream = synthetic_stream(args.buckets, args.samples, args.test_samples, seed=args.seed)
    print(f"stream {stream.name}: {len(stream)} buckets, {sum(len(b.train) for b in stream.buckets)} training "
          f"images; runners {', '.join(runners)}", file=sys.stderr)
    if args.warmup:  # first calls pay oneDNN's primitive creation (much more in bf16): once per runner, discarded
        small = synthetic_stream(2, 2 * max(args.batch_sizes), 10, seed=args.seed + 1000)
        for runner in runners:
            for strategy in args.strategies:
                run_one(runner, small, strategy, types.SimpleNamespace(**{**vars(args), "model": args.models[0],
                                                                        "batch_size": max(args.batch_sizes)}), 0)
    runs, turn = [], 0
    for rep in range(args.reps):
        seed = args.seed + rep
        for model in args.models:
            for strategy in args.strategies:
                for batch in args.batch_sizes:
                    run_args = types.SimpleNamespace(**{**vars(args), "model": model, "batch_size": batch})
                    order = runners[turn % len(runners):] + runners[: turn % len(runners)]
                    turn += 1
                    for runner in order:
                        load = os.getloadavg()[0]
                        r = run_one(runner, stream, strategy, run_args, seed)
                        runs.append({"rep": rep, "seed": seed, "model": model, "strategy": strategy,
                                     "batch_size": batch, "runner": runner, "loadavg_1min_before": load,
                                     **{k: v for k, v in r.items() if k not in ("R", "b")}})
                        print(f"rep {rep + 1}/{args.reps} {model} {strategy:6s} b{batch:<3d} {runner:6s}: "
                              f"cpu {r['train_cpu_seconds']:.1f}s wall {r['train_seconds']:.1f}s acc {r['acc']:.3f}",
                              file=sys.stderr)
    out = {"study": "conv models on images: engine vs floor vs peer", "command": command_line(argv),
           "machine": info, "stream": stream.summary(),
           "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "runners": runners, "runs": runs, **({"fixture": fixture} if fixture else {}),
           "wall_seconds": time.perf_counter() - t_start}
    publish(out, args.out, args.markdown)
    return 0


def _workload(out: dict) -> str:
    """The stream, in words."""
    s, st = out["stream"], out["settings"]
    if not st.get("clear"):
        return (f"Stream {s['name']}: {s['buckets']} buckets × {s['train_sizes'][0]} images 3×32×32 "
                f"({s['test_sizes'][0]} held out each), {s['num_classes']} classes")
    fx = out.get("fixture")
    made = (f", written by `--make-clear`: {fx['images']} JPEG photos of {fx['jpeg_sizes'][0][0]}×{fx['jpeg_sizes'][0][1]} "
            f"to {fx['jpeg_sizes'][-2][0]}×{fx['jpeg_sizes'][-2][1]}, median {fx['jpeg_bytes_median'] / 1024:.0f} KiB"
            if fx else "")
    return (f"Stream {s['name']}: a CLEAR-layout folder{made}; {s['buckets']} buckets × {s['train_sizes'][0]} images, "
            f"{s['num_classes']} classes, decoded once into memory as uint8 3×32×32 (decoding not timed), viewed as "
            "the learner does (ImageNet normalisation; crop and flip for training); streaming protocol (each bucket "
            "is tested on its own images)")


def _replay_memory(st: dict) -> str:
    if st.get("retain_ratio"):
        return (f"replay keeps {st['retain_ratio'] * 100:g}% of each bucket (ratio retention, random selection, "
                "written at bucket ends; the floor the same)")
    return f"replay memory {st['replay_capacity']} (reservoir written at bucket ends)"


def publish(out: dict, path: Path, markdown: Path) -> None:
    rows = out["summary"] = summarise(out["runs"])
    md = table(rows)
    print(md)
    write_results(out, path)
    if str(markdown) == "-":
        return
    st = out["settings"]
    loads = [r["loadavg_1min_before"] for r in out["runs"]]
    body = "\n".join([
        "### Conv models on images: engine vs floor vs peer (`benchmarks/conv_images.py`"
        + (f", {st['section']})" if st.get("section", SECTION) != SECTION else ")"),
        "",
        f"Machine: {machine_line(out['machine'], loads)}.",
        "",
        f"Command: `{out['command']}` ({out['wall_seconds'] / 60:.0f} min). {_workload(out)}, "
        f"1 epoch, SGD lr {st['lr']}; {_replay_memory(st)}"
        + (f", GEM/A-GEM {st['memory_per_bucket']} memories per bucket, A-GEM sample {st['agem_sample_size']}; "
           if {"gem", "agem"} & set(st["strategies"]) else "; ")
        + f"engine and floor in {st.get('precision', 'fp32')}{', channels_last' if st.get('channels_last') else ''} "
        + ("(the peer in fp32); " if "peer" in out["runners"] else "(no peer in this run); ")
        + (f"medians of {st['reps']} repetitions" if st["reps"] > 1 else "one repetition (one seed)")
        + f", runners ({', '.join(out['runners'])}) alternated"
        f"{'' if st.get('warmup') else ', no warm-up (the first run of a runner pays oneDNN primitive creation)'}.",
        "",
        md,
        "",
        "CPU s: thread CPU seconds of training (evaluation excluded for all); ratios are of those medians. "
        "Bucket ends: the engine's consolidation (scoring, selection, memory writes), its share of the engine's "
        "training wall time. Evaluation s: the engine's held-out evaluations (T² + T sets), not in training. "
        "ACC: mean final accuracy over the buckets' held-out sets"
        + (" (streaming protocol: each bucket's own training images)." if st.get("clear") else "."),
    ])
    write_markdown(markdown, body, st.get("section", SECTION))


if __name__ == "__main__":
    sys.exit(entry_point(main, lambda out, path, md: publish(out, path, md), "conv_images"))
