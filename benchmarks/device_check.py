"""Device check (issue 24): ResNet18 at 224 px on a CLEAR-layout fixture, on one GPU, in minutes.

    benchmarks/device_check.sh                          # the GPU session's one command (it calls this script)
    python benchmarks/device_check.py --device cuda     # this part alone, on a machine with a GPU
    python benchmarks/device_check.py --device cpu --tiny --markdown -   # seconds: the smoke test a test runs
    python benchmarks/device_check.py render RESULTS.json               # re-render the BENCHMARKS.md section

Writes the JSON (`--out`, default benchmarks/results/device_check.json) and, on CUDA, the
`device_check` section of BENCHMARKS.md. Progress lines go to stderr with the seconds elapsed.

The fixture is made here: a CLEAR-layout folder (the NeurIPS 2021 release's: class_names.txt,
training_folder/filelists/<b>/all.txt, labeled_images/<b>/<class>/<id>.jpg) of the 11 CLEAR-10 classes, JPEGs
at the sizes of CLEAR's files (Flickr photos as YFCC100M serves them: 500 px on the longer side, 4:3, 3:2 and
square, landscape and portrait; an assumption about the real release, stated here, that its first look at
CLEAR can check), smooth photo-like content with a colour cast per class. cl_engine's CLEAR loader reads it
and decodes every image once, as uint8 at the model's size (resize and centre crop, what the memory stores);
that decode is timed apart (one CPU thread per image in a pool), and the training below starts from the
decoded tensors, so that the ways compare training, not JPEG decoding.

Four ways train the same batches (cl_engine.schedule, seed 0) of the same model (cl_engine's `resnet18`,
from scratch; SGD lr 0.01, momentum 0.9, weight decay 1e-5, as the CLEAR study), with crop-flip
augmentation and ImageNet normalisation on the device:
- floor: a plain PyTorch loop: uint8 batch to the device, the same view (cl_engine.views' crop-flip, the
  same arithmetic), forward, cross-entropy, backward, torch.optim.SGD step; for replay, a batch of as many
  memories drawn from a plain tensor memory of earlier buckets is trained with it, as the engine does.
- engine: cl_engine.Learner.observe per batch, end_bucket between buckets, in this process.
- service-thread / service-process: a `clstream-server` child process (client.local_server) on loopback,
  the learner in a thread of the server or in a process of its own (`--learner-process`), fed the uint8
  batches over one Train stream per bucket by client.api.Client; EndBucket between buckets.
Bucket 0 warms every way up (cuDNN's algorithm search, allocations, the server's first publication) and
is not timed; the later buckets are: images/s = their images / wall seconds from the first batch sent to
the last one applied (synchronised on CUDA). Each precision is measured: fp32, and AMP (bf16 autocast, and
channels_last for the model) where the engine has the option (`LearnerConfig.precision`; without it the
AMP rows hold the floor only, and say so). No held-out sets are registered: evaluation is not timed here.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "proto")]  # this checkout, whatever the interpreter has installed

from benchmarks.common import (  # noqa: E402
    command_line, entry_point, machine, machine_line, write_markdown, write_results)
from cl_engine.streams.clear_fixture import CLEAR10_CLASSES, write_clear_fixture  # noqa: E402

SECTION = "device_check"
SIZES = [(500, 375), (375, 500), (500, 333), (333, 500), (500, 500)]  # (width, height) of the fixture's JPEGs
WAYS = ("floor", "engine", "service-thread", "service-process")
FULL = dict(pixels=224, buckets=3, per_class=50, batch=64, sizes=SIZES)  # 550 images a bucket, 2 timed buckets
TINY = dict(pixels=16, buckets=2, per_class=1, batch=4, sizes=[(50, 38), (38, 50)])


class Clock:
    """Seconds since the start, for progress lines and the time box."""

    def __init__(self, budget: float):
        self.t0, self.budget = time.perf_counter(), budget

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget - self.elapsed

    def say(self, message: str) -> None:
        print(f"[device_check +{self.elapsed:.0f}s] {message}", file=sys.stderr, flush=True)


# -- the fixture ----------------------------------------------------------------------------------

def decode_stream(root: Path, pixels: int, workers: int) -> tuple[object, list, dict]:
    """The fixture through cl_engine's CLEAR loader, every bucket decoded once as the memory stores it (uint8):
    (stream, [(x uint8, y)] per bucket, decode timing)."""
    from cl_engine.streams.clear import clear_stream

    stream = clear_stream(root, image_size=pixels)
    t0 = time.perf_counter()
    decoded = []
    with ThreadPoolExecutor(workers) as pool:
        for bucket in stream.buckets:
            chunks = torch.arange(len(bucket.train)).split(16)
            parts = list(pool.map(bucket.train.stored, chunks))
            decoded.append((torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])))
    seconds = time.perf_counter() - t0
    n = sum(len(y) for _, y in decoded)
    return stream, decoded, {"images": n, "seconds": seconds, "images_per_s": n / seconds, "threads": workers}


# -- the ways -------------------------------------------------------------------------------------

def learner_kwargs(args, strategy: str, amp: bool) -> dict:
    from cl_engine import LearnerConfig

    kw = dict(model="resnet18", strategy=strategy, lr=0.01, momentum=0.9, weight_decay=1e-5, augment="crop-flip",
              uint8_inputs="imagenet", buffer_capacity=args.memory, replay_batch_size=args.batch, seed=0,
              device=args.device)
    if amp:
        kw["precision"] = "bf16"
        if "channels_last" in LearnerConfig.model_fields:
            kw["channels_last"] = True
    return kw


def plans(decoded, batch: int) -> list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """Per bucket, its batches (x uint8, y, sample ids) in run_stream's order (seed 0, one pass)."""
    from cl_engine.schedule import bucket_batches

    return [[(x[i], y[i], i) for i in bucket_batches(len(y), batch, 1, 0, b)] for b, (x, y) in enumerate(decoded)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_buckets(buckets, train_bucket, end_bucket, device) -> tuple[int, float]:
    """Bucket 0 untimed, then the rest timed: (images, seconds)."""
    images, seconds = 0, 0.0
    for b, batches in enumerate(buckets):
        sync(device)
        t0 = time.perf_counter()
        train_bucket(b, batches)
        sync(device)
        if b:
            seconds += time.perf_counter() - t0
            images += sum(len(y) for _, y, _ in batches)
        end_bucket(b, batches)
    return images, seconds


def run_floor(args, buckets, shape, classes: int, strategy: str, amp: bool) -> tuple[int, float]:
    from cl_engine.models import build_model
    from cl_engine.views import InputView

    device = torch.device(args.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model("resnet18", shape, classes).to(device)
    if amp:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-5)
    view, crops, draws = InputView("crop-flip", "imagenet"), torch.Generator().manual_seed(1), torch.Generator()
    memory: list[torch.Tensor] = []  # replay: uint8 samples and labels of the ended buckets, on the device
    model.train()

    def step(x, y):
        x, y = x.to(device), y.to(device)
        if strategy == "replay" and memory:
            picks = torch.randint(len(memory[1]), (len(y),), generator=draws).to(device)
            x, y = torch.cat([x, memory[0][picks]]), torch.cat([y, memory[1][picks]])
        x = view.training(x, crops)
        if amp:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def train_bucket(b, batches):
        for x, y, _ in batches:
            step(x, y)

    def end_bucket(b, batches):
        if strategy == "replay":
            x = torch.cat([x for x, _, _ in batches]).to(device)
            y = torch.cat([y for _, y, _ in batches]).to(device)
            keep = torch.randperm(len(y), generator=draws)[: max(1, args.memory // len(buckets))].to(device)
            memory[:] = [torch.cat([memory[0], x[keep]]), torch.cat([memory[1], y[keep]])] if memory \
                else [x[keep], y[keep]]

    return timed_buckets(buckets, train_bucket, end_bucket, device)


def run_engine(args, buckets, shape, classes: int, strategy: str, amp: bool) -> tuple[int, float]:
    from cl_engine import LearnerConfig
    from cl_engine.learner import Learner

    learner = Learner(LearnerConfig(**learner_kwargs(args, strategy, amp)), shape, classes)

    def train_bucket(b, batches):
        for x, y, ids in batches:
            learner.observe(x, y, b, ids=ids)

    def end_bucket(b, batches):
        learner.end_bucket(b, bucket_size=sum(len(y) for _, y, _ in batches))

    return timed_buckets(buckets, train_bucket, end_bucket, learner.device)


def server_args(args, stream, strategy: str, amp: bool, learner_process: bool) -> list[str]:
    flags = []
    for key, value in learner_kwargs(args, strategy, amp).items():
        flag = "--" + key.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
    return flags + ["--input-shape", *map(str, stream.input_shape), "--class-names", *stream.class_names,
                    "--checkpoint-every-batches", "0", "--log-level", "warning"] + \
        (["--learner-process"] if learner_process else [])


def run_service(args, buckets, stream, strategy: str, amp: bool, learner_process: bool, log: Path
                ) -> tuple[int, float]:
    from client.api import Batch, Client, Schema
    from client.local_server import LocalServer

    server = LocalServer(server_args(args, stream, strategy, amp, learner_process), log_path=log,
                         threads=None if args.device == "cuda" else 1)
    server.start()
    schema = Schema(tuple(stream.class_names), tuple(stream.input_shape))
    sequence = [1]
    try:
        with Client(server.target, timeout=600) as client:
            def train_bucket(b, batches):
                first = sequence[0]
                sent = [Batch("device-check", first + k, b, x, y, sample_ids=ids) for k, (x, y, ids) in
                        enumerate(batches)]
                acks = list(client.train(sent, schema=schema if first == 1 else None))
                if not all(a.applied for a in acks) or len(acks) != len(sent):
                    raise RuntimeError(f"the server applied {sum(a.applied for a in acks)} of {len(sent)} batches")
                sequence[0] += len(sent)

            def end_bucket(b, batches):
                client.end_bucket(b, bucket_size=sum(len(y) for _, y, _ in batches))

            return timed_buckets(buckets, train_bucket, end_bucket, torch.device("cpu"))
    finally:
        server.stop()


# -- the study ------------------------------------------------------------------------------------

def ratios(rows: list[dict]) -> dict:
    out = {}
    for key in sorted(dict.fromkeys((r["strategy"], r["precision"]) for r in rows), key=lambda k: (k[0], k[1] != "fp32")):
        speed = {r["way"]: r["images_per_s"] for r in rows if (r["strategy"], r["precision"]) == key}
        pairs = {"engine/floor": ("engine", "floor"), "service-thread/engine": ("service-thread", "engine"),
                 "service-process/engine": ("service-process", "engine"),
                 "service-thread/floor": ("service-thread", "floor"),
                 "service-process/floor": ("service-process", "floor")}
        out[f"{key[0]} {key[1]}"] = {name: speed[a] / speed[b] for name, (a, b) in pairs.items()
                                     if a in speed and b in speed}
    return out


def test_summary(path: Path | None) -> dict | None:
    """Counts from the CUDA tests' junit XML, when the shell script ran them."""
    if path is None or not path.is_file():
        return None
    import xml.etree.ElementTree as ET

    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    return {**counts, "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
            "failed": failed, "seconds": float(suite.get("time", 0))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--tiny", action="store_true", help="16 px, 2 buckets of 11 images, batch 4, replay only, AMP for the "
                                                       "floor and engine only: seconds on a CPU; a smoke test of this "
                                                       "script, not a measurement")
    p.add_argument("--strategies", nargs="+", choices=("naive", "replay"), default=None,
                   help="default: naive and replay (--tiny: replay)")
    p.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS))
    p.add_argument("--pixels", type=int, help="image size the model trains at (default 224; --tiny 16)")
    p.add_argument("--per-class", type=int, help="JPEGs per class and bucket (default 50; --tiny 1)")
    p.add_argument("--batch", type=int, help="batch size (default 64; --tiny 4)")
    p.add_argument("--budget-seconds", type=float, default=270.0,
                   help="time box: a (strategy, precision) group that would start after the box is left out, and said so")
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="processes making the JPEGs, threads decoding them")
    p.add_argument("--fixture", type=Path, default=None, help="folder for the CLEAR-layout fixture (default: a temp folder)")
    p.add_argument("--tests", type=Path, default=None, help="junit XML of the CUDA tests, summarised into the results")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "device_check.json")
    p.add_argument("--markdown", type=Path, default=None,
                   help="BENCHMARKS.md to rewrite the section of; '-' for none (default: BENCHMARKS.md on CUDA, none on a CPU)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("device_check: --device cuda, but torch.cuda.is_available() is False here; expected a CUDA machine, "
              "or --device cpu --tiny for the smoke test", file=sys.stderr)
        return 2
    if args.tiny and args.strategies is None:
        args.strategies = ["replay"]  # one strategy, the one whose floor has the most code
    args.strategies = args.strategies or ["naive", "replay"]
    size = dict(TINY if args.tiny else FULL)
    size.update({k: v for k, v in (("pixels", args.pixels), ("per_class", args.per_class), ("batch", args.batch))
                 if v is not None})
    args.batch, args.memory = size["batch"], 4 * size["batch"] if args.tiny else 500
    markdown = args.markdown or (ROOT / "BENCHMARKS.md" if args.device == "cuda" else Path("-"))
    if args.device == "cpu":
        torch.set_num_threads(1)
    clock = Clock(args.budget_seconds)
    import tempfile

    info = machine()
    clock.say(f"machine: {machine_line(info)}")
    out = {"study": "device check: ResNet18 on a CLEAR-layout fixture, floor / engine / service", "command":
           command_line(argv), "machine": info, "settings": {**{k: str(v) if isinstance(v, Path) else v
                                                               for k, v in vars(args).items()}, **size,
                                                            "sizes": [list(s) for s in size["sizes"]]},
           "precision_option": _has_precision(), "rows": [], "left_out": [], "tests": test_summary(args.tests)}
    with tempfile.TemporaryDirectory(prefix="clstream-device-check-") as tmp:
        root = args.fixture or Path(tmp) / "clear"
        out["fixture"] = write_clear_fixture(root, size["buckets"], CLEAR10_CLASSES, size["per_class"], size["sizes"],
                                             release="neurips2021", workers=args.workers)
        clock.say(f"fixture: {out['fixture']['images']} JPEGs ({out['fixture']['jpeg_bytes_median'] // 1024} KiB "
                  f"median) in {root}")
        stream, decoded, out["decode"] = decode_stream(root, size["pixels"], args.workers)
        clock.say(f"decoded to uint8 3x{size['pixels']}x{size['pixels']}: {out['decode']['images_per_s']:.0f} images/s "
                  f"({args.workers} threads)")
        buckets = plans(decoded, args.batch)
        shape, classes = tuple(stream.input_shape), stream.num_classes
        for amp in (False, True):
            precision = "amp-bf16" if amp else "fp32"
            for strategy in args.strategies:
                if clock.left() < 0:
                    out["left_out"].append(f"{strategy} {precision}: the {args.budget_seconds:.0f}s time box was spent")
                    clock.say(f"left out {strategy} {precision}: time box spent")
                    continue
                for way in args.ways:
                    if amp and way != "floor" and not out["precision_option"]:
                        out["left_out"].append(f"{strategy} {precision} {way}: LearnerConfig has no precision option")
                        continue
                    if amp and args.tiny and way.startswith("service"):
                        continue  # the smoke test starts each server kind once (the flags are built alike)
                    if way == "floor":
                        images, seconds = run_floor(args, buckets, shape, classes, strategy, amp)
                    elif way == "engine":
                        images, seconds = run_engine(args, buckets, shape, classes, strategy, amp)
                    else:
                        log = Path(tmp) / f"server-{way}-{strategy}-{precision}.log"
                        images, seconds = run_service(args, buckets, stream, strategy, amp,
                                                      way == "service-process", log)
                    row = {"strategy": strategy, "precision": precision, "way": way, "images": images,
                           "seconds": seconds, "images_per_s": images / seconds if seconds > 0 else math.nan}
                    out["rows"].append(row)
                    clock.say(f"{strategy:6s} {precision:8s} {way:15s} {row['images_per_s']:8.1f} images/s "
                              f"({images} images in {seconds:.2f}s)")
    out["ratios"] = ratios(out["rows"])
    out["wall_seconds"] = clock.elapsed
    publish(out, args.out, markdown)
    return 0


def _has_precision() -> bool:
    from cl_engine import LearnerConfig

    return "precision" in LearnerConfig.model_fields


def table(out: dict) -> str:
    lines = ["| strategy | precision | floor images/s | engine images/s | service (thread) | service (process) "
             "| engine / floor | service thread / engine | service process / engine |", "|" + "---|" * 9]
    for key, r in ratios(out["rows"]).items():
        strategy, precision = key.split(" ")
        speed = {row["way"]: row["images_per_s"] for row in out["rows"]
                 if (row["strategy"], row["precision"]) == (strategy, precision)}
        cell = lambda way: f"{speed[way]:.0f}" if way in speed else "–"  # noqa: E731
        ratio = lambda name: f"{r[name]:.2f}" if name in r else "–"  # noqa: E731
        lines.append(f"| {strategy} | {precision} | {cell('floor')} | {cell('engine')} | {cell('service-thread')} "
                     f"| {cell('service-process')} | {ratio('engine/floor')} | {ratio('service-thread/engine')} "
                     f"| {ratio('service-process/engine')} |")
    return "\n".join(lines)


def publish(out: dict, path: Path, markdown: Path) -> None:
    print(json.dumps({"ratios": out["ratios"], "left_out": out["left_out"], "tests": out["tests"]}, indent=1))
    write_results(out, path)
    if str(markdown) == "-":
        return
    st, tests = out["settings"], out.get("tests")
    tests_line = (f"CUDA-marked tests: {tests['passed']} passed, {tests['failures'] + tests['errors']} failed, "
                  f"{tests['skipped']} skipped ({tests['seconds']:.0f}s)"
                  + (f"; failed: {', '.join(tests['failed'])}" if tests["failed"] else "") + "."
                  if tests else "CUDA-marked tests: not run with this measurement.")
    body = "\n".join([
        f"### {'CUDA' if out['machine'].get('cuda_device') else 'CPU (no CUDA device)'}: ResNet18 at {st['pixels']} px on a "
        "CLEAR-layout fixture (`benchmarks/device_check.sh`, issue 24)",
        "",
        f"Machine: {machine_line(out['machine'])}.",
        "",
        f"Command: `{out['command']}` ({out['wall_seconds'] / 60:.1f} min)" + (" — **tiny: a smoke test**" if st["tiny"]
                                                                              else ""),
        "",
        f"Fixture: {out['fixture']['images']} JPEGs in the CLEAR-10 layout ({out['fixture']['classes']} classes, "
        f"{out['fixture']['buckets']} buckets; sizes {', '.join('×'.join(map(str, s)) for s in st['sizes'])}, "
        f"median {out['fixture']['jpeg_bytes_median'] // 1024} KiB), decoded once to uint8 {st['pixels']} px through "
        f"cl_engine's CLEAR loader at {out['decode']['images_per_s']:.0f} images/s ({out['decode']['threads']} "
        f"threads). Training: `resnet18` from scratch, batch {st['batch']}, SGD lr 0.01 momentum 0.9, crop-flip "
        "and ImageNet normalisation on the device; bucket 0 warms up, the later buckets are timed (wall, "
        "synchronised). Replay: as many memories as new samples per step. amp-bf16: bf16 autocast and "
        "channels_last (the engine's `precision` option; plain torch.autocast in the floor).",
        "",
        table(out),
        "",
        tests_line + (" Left out: " + "; ".join(out["left_out"]) + "." if out["left_out"] else ""),
    ])
    write_markdown(markdown, body, SECTION)


if __name__ == "__main__":
    sys.exit(entry_point(main, publish, "device_check"))
