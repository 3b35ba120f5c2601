"""Scale (issue 7, study 5): ResNet18 throughput at 32, 64 and 224 pixels, and replay memory per sample.

    python benchmarks/scale.py                 # default: CPU (and CUDA when available), ~4-6 min on 2 cores
    python benchmarks/scale.py --quick         # smoke test, about a minute
    python benchmarks/scale.py --device cuda   # only the GPU (auto: CPU, plus CUDA when there is one)

Writes benchmarks/results/scale.json, prints the tables and rewrites the `scale` section of
BENCHMARKS.md.

Throughput: cl_engine's `resnet18` (torchvision's, from scratch; below 64 px the CIFAR stem)
with 10 classes in a cl_engine Learner (strategy replay, SGD lr 0.01 momentum 0.9 wd 1e-5 as
the CLEAR study trains it), its buffer pre-filled with random images of the size.
- train: `Learner.observe` on an incoming batch (test-then-train: it scores the batch, then one
  step on the batch plus an equally large replay batch from the buffer). Images/s counts the
  incoming images; each step computes forward and backward for twice as many.
- predict: `Learner.predict` (eval mode, no grad, softmax) on a batch of 64.
Batch sizes and steps are smaller at 224 px so the CPU run stays minutes (the table says which).
Each point is the median of `--reps` repetitions after one warm-up call; CPU runs use one torch
thread by default (`--threads`), CUDA runs are synchronised before and after each timing.

Memory: a ReplayBuffer of each capacity filled with samples of each shape (1×8×8, 784,
3×32×32, 3×224×224): its bytes per sample from its tensors' nbytes (x, labels, bucket ids,
priorities) and from the growth of the process's resident set (each point measured in a forked
child, so that one point's freed memory cannot hide the next one's), against the raw sample:
float32 values and, for images, one byte per value. Points whose buffer would exceed
`--max-rss-bytes` are computed from nbytes only.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "proto")]  # this checkout, whatever the venv has installed

from benchmarks.common import (  # noqa: E402
    QUICK_SETTINGS, command_line, entry_point, machine, machine_line, median, output_flags, section_head, study_parser,
    write_markdown, write_results)
from cl_engine import LearnerConfig  # noqa: E402
from cl_engine.buffer import ReplayBuffer  # noqa: E402
from cl_engine.learner import Learner  # noqa: E402

SECTION = "scale"
CLASSES = 10
# pixels -> (train batch, train steps, predict steps) per repetition on a CPU
CPU_PLAN = {32: (32, 3, 2), 64: (32, 5, 3), 224: (8, 2, 1)}
QUICK_PLAN = {32: (4, 1, 1), 64: (4, 1, 1), 224: (2, 1, 1)}
CUDA_STEPS = (20, 20)  # train, predict steps per repetition on a GPU (the batch as on the CPU, 224 px: 32)
SHAPES = {"1x8x8": (1, 8, 8), "784": (784,), "3x32x32": (3, 32, 32), "3x224x224": (3, 224, 224)}
CAPACITIES = (100, 1000, 3000, 10000)


# -- throughput -----------------------------------------------------------------------------------

def sync_fn(device: torch.device):
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def throughput(px: int, device: str, batch: int, train_steps: int, predict_steps: int, predict_batch: int,
               reps: int, seed: int) -> dict:
    shape = (3, px, px)
    config = LearnerConfig(model="resnet18", strategy="replay", lr=0.01, momentum=0.9, weight_decay=1e-5,
                           buffer_capacity=max(4 * batch, 64), replay_batch_size=batch, seed=seed, device=device)
    learner = Learner(config, shape, CLASSES)
    dev = learner.device
    g = torch.Generator().manual_seed(seed)
    cap = config.buffer_capacity
    learner.buffer.write(torch.arange(cap), torch.rand(cap, *shape, generator=g),
                         torch.randint(0, CLASSES, (cap,), generator=g), 0)
    xs = torch.rand(batch, *shape, generator=g)
    ys = torch.randint(0, CLASSES, (batch,), generator=g)
    xp = torch.rand(predict_batch, *shape, generator=g)
    sync = sync_fn(dev)

    def train():
        learner.observe(xs, ys, 0)

    def predict():
        learner.predict(xp)

    out = {"pixels": px, "device": str(dev), "train_batch": batch, "replay_batch": batch, "train_steps": train_steps,
           "predict_batch": predict_batch, "predict_steps": predict_steps, "runs": []}
    for name, fn, steps, n in (("train", train, train_steps, batch), ("predict", predict, predict_steps, predict_batch)):
        fn()  # warm-up (allocations, cuDNN autotuning)
        sync()
        for rep in range(reps):
            sync()
            w0, c0 = time.perf_counter(), time.thread_time()
            for _ in range(steps):
                fn()
            sync()
            wall, cpu = (time.perf_counter() - w0) / steps, (time.thread_time() - c0) / steps
            out["runs"].append({"what": name, "rep": rep, "step_wall_s": wall, "step_cpu_s": cpu,
                                "images_per_s_wall": n / wall, "images_per_s_cpu": n / cpu if cpu > 0 else math.nan})
        rs = [r for r in out["runs"] if r["what"] == name]
        out[f"{name}_images_per_s"] = median([r["images_per_s_wall"] for r in rs])
        out[f"{name}_images_per_s_cpu_time"] = median([r["images_per_s_cpu"] for r in rs])
        out[f"{name}_step_ms"] = median([r["step_wall_s"] for r in rs]) * 1e3
        print(f"{px:>3} px {str(dev):6s} {name:7s}: {out[f'{name}_images_per_s']:.1f} images/s "
              f"({out[f'{name}_step_ms']:.0f} ms per batch of {n})", file=sys.stderr)
    del learner
    if dev.type == "cuda":
        out["cuda_max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated(dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    return out


# -- memory ---------------------------------------------------------------------------------------

def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return -1


def _fill(shape, capacity, conn):
    """In a forked child: RSS growth of a ReplayBuffer filled to capacity."""
    torch.set_num_threads(1)
    chunk = max(1, min(capacity, (64 << 20) // (4 * math.prod(shape))))  # ≤ 64 MiB of samples at a time
    x = torch.rand(chunk, *shape)
    y = torch.randint(0, CLASSES, (chunk,))
    warm = ReplayBuffer(2)  # the child's first tensor ops set up torch's own state: not the buffer's memory
    warm.write(torch.arange(2), x[:2], y[:2], 0)
    warm.write(torch.arange(1), x[:1], y[:1], 0)
    try:  # the parent's freed but resident heap, inherited, would otherwise be reused without growing RSS
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    before = rss_bytes()
    buf = ReplayBuffer(capacity)
    for start in range(0, capacity, chunk):
        n = min(chunk, capacity - start)
        buf.write(torch.arange(start, start + n), x[:n], y[:n], 0)
    after = rss_bytes()
    conn.send({"rss_growth_bytes": after - before, "nbytes": buf.nbytes(), "size": len(buf)})
    conn.close()


def memory_point(name: str, shape, capacity: int, max_rss: int) -> dict:
    values = math.prod(shape)
    buf = ReplayBuffer(capacity)
    buf.write(torch.arange(1), torch.zeros(1, *shape), torch.zeros(1, dtype=torch.int64), 0)
    tensors = {"x": buf.x.nbytes, "y": buf.y.nbytes, "bucket": buf.bucket.nbytes, "priority": buf.priority.nbytes}
    nbytes = sum(tensors.values())
    del buf
    row = {"shape": name, "capacity": capacity, "values_per_sample": values, "raw_float32_bytes": 4 * values,
           "raw_uint8_bytes": values if len(shape) == 3 else None, "tensor_nbytes": tensors,
           "nbytes_total": nbytes, "nbytes_per_sample": nbytes / capacity,
           "nbytes_over_raw_float32": nbytes / capacity / (4 * values)}
    if len(shape) == 3:
        row["nbytes_over_raw_uint8"] = nbytes / capacity / values
    if nbytes <= max_rss:
        ctx = mp.get_context("fork")
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_fill, args=(shape, capacity, child))
        proc.start()
        got = parent.recv()
        proc.join()
        row["rss_growth_bytes"] = got["rss_growth_bytes"]
        row["rss_per_sample"] = got["rss_growth_bytes"] / capacity
        row["rss_over_nbytes"] = got["rss_growth_bytes"] / nbytes
    else:
        row["rss_growth_bytes"] = None
        row["rss_skipped"] = f"buffer of {nbytes / 2**30:.1f} GiB over --max-rss-bytes"
    return row


# -- output ---------------------------------------------------------------------------------------

def fmt_bytes(n) -> str:
    if n is None:
        return "–"
    for unit, k in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= k:
            return f"{n / k:.1f} {unit}"
    return f"{n:.0f} B"


def tables(out) -> str:
    lines = ["| pixels | device | train batch (+ replay) | train images/s | train ms/step | predict batch "
             "| predict images/s | predict ms/batch |", "|" + "---|" * 8]
    for r in out["throughput"]:
        lines.append(f"| {r['pixels']} | {r['device']} | {r['train_batch']} (+{r['replay_batch']}) "
                     f"| **{r['train_images_per_s']:.1f}** | {r['train_step_ms']:.0f} | {r['predict_batch']} "
                     f"| **{r['predict_images_per_s']:.1f}** | {r['predict_step_ms']:.0f} |")
    lines += ["", "| sample | capacity | buffer (nbytes) | bytes/sample (nbytes) | × raw float32 | × raw uint8 "
              "| RSS growth | RSS bytes/sample |", "|" + "---|" * 8]
    for r in out["memory"]:
        u8 = f"{r['nbytes_over_raw_uint8']:.2f}" if r.get("nbytes_over_raw_uint8") else "–"
        rss = r.get("rss_growth_bytes")
        lines.append(f"| {r['shape']} | {r['capacity']} | {fmt_bytes(r['nbytes_total'])} | {r['nbytes_per_sample']:.0f} "
                     f"| {r['nbytes_over_raw_float32']:.3f} | {u8} | {fmt_bytes(rss) if rss is not None else 'skipped'} "
                     f"| {r['rss_per_sample']:.0f} |" if rss is not None else
                     f"| {r['shape']} | {r['capacity']} | {fmt_bytes(r['nbytes_total'])} | {r['nbytes_per_sample']:.0f} "
                     f"| {r['nbytes_over_raw_float32']:.3f} | {u8} | skipped (over limit) | – |")
    return "\n".join(lines)


def reading(out) -> str:
    cpu = [r for r in out["throughput"] if r["device"] == "cpu"]
    parts = []
    if cpu:
        parts.append("On this CPU (" + f"{out['machine']['torch_threads']} torch thread(s)) training runs at "
                     + ", ".join(f"{r['train_images_per_s']:.1f} images/s at {r['pixels']} px" for r in cpu)
                     + " and prediction at "
                     + ", ".join(f"{r['predict_images_per_s']:.1f}" for r in cpu)
                     + " images/s. 64 px is cheaper than 32 px because at 64 px and above ResNet18 keeps its ImageNet "
                     "stem (stride-2 convolution and max-pool: the first block sees 16×16), while below 64 px it gets the "
                     "CIFAR stem (the first block sees the full 32×32). Per incoming image, training costs "
                     + ", ".join(f"{r['predict_images_per_s'] / r['train_images_per_s']:.0f}× at {r['pixels']} px" for r in cpu)
                     + " a prediction: forward and backward over the incoming batch and an equally large replay "
                     "batch, with the incoming batch first scored (test-then-train). At 224 px a CPU "
                     "learns from a few images a second: a live CLEAR-sized stream at full resolution needs a GPU.")
    gpu = [r for r in out["throughput"] if r["device"].startswith("cuda")]
    if gpu:
        parts.append("On " + out["machine"].get("cuda_device", "the GPU") + ": " + ", ".join(
            f"{r['pixels']} px train {r['train_images_per_s']:.0f} / predict {r['predict_images_per_s']:.0f} images/s"
            for r in gpu) + ".")
    else:
        parts.append("No CUDA device was present in this run, so there are no GPU rows.")
    mem = out["memory"]
    big = [r for r in mem if r.get("rss_over_nbytes")]
    if mem:
        img = sorted((r for r in mem if r["shape"] == "3x224x224"), key=lambda r: r["capacity"])
        ov = [r["nbytes_over_raw_float32"] for r in mem]
        parts.append(f"The replay buffer holds each sample as float32 plus 20 bytes of label, bucket id and priority "
                     f"(int64, int64, float32): {min(ov):.3f}–{max(ov):.3f}× the raw float32 sample, the overhead only "
                     "visible for tiny samples (1×8×8: 256 B + 20 B). Against images as decoded bytes (uint8) that is "
                     "4×: a 3×224×224 sample takes "
                     + (fmt_bytes(img[0]['nbytes_per_sample']) if img else "–")
                     + (f", so {img[-1]['capacity']:,} of them take {fmt_bytes(img[-1]['nbytes_total'])}" if img else "")
                     + "; storing uint8 and converting per batch would cut that by 4. The allocation is made once, "
                     "at the first write, for the full capacity.")
        if big:
            rs = [r["rss_over_nbytes"] for r in big]
            parts.append(f"Measured resident growth matches nbytes ({min(rs):.2f}–{max(rs):.2f}× nbytes over the "
                         f"{len(rs)} points measured; below about 100 KiB the page granularity shows): the buffer "
                         "holds nothing beyond its tensors.")
    return " ".join(parts)


def publish(out: dict, path: Path, markdown: Path) -> None:
    md = tables(out)
    print(md)
    write_results(out, path)
    if str(markdown) == "-":
        return
    st = out["settings"]
    body = "\n".join(section_head("### Scale: ResNet18 throughput and replay memory (`benchmarks/scale.py`, issue 7 study 5)",
                                  out, quick=QUICK_SETTINGS) + [
        "Throughput: cl_engine `resnet18`, 10 classes, random images; train = `Learner.observe` with replay (incoming "
        "batch scored, then one SGD step on it plus an equal replay batch; images/s counts incoming images); predict = "
        f"`Learner.predict` (eval mode, no grad). Wall-clock medians of {st['reps']} repetitions (thread-CPU figures in "
        "the JSON). Memory: `ReplayBuffer` filled to capacity; nbytes from its tensors, RSS growth measured in a forked "
        "child per point.",
        "",
        tables(out),
        "",
        reading(out),
    ])
    write_markdown(markdown, body, SECTION)


def main(argv=None) -> int:
    p = study_parser(__doc__)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: the CPU, and CUDA too when torch.cuda.is_available()")
    p.add_argument("--pixels", type=int, nargs="+", default=[32, 64, 224])
    p.add_argument("--predict-batch", type=int, default=64)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--capacities", type=int, nargs="+", default=list(CAPACITIES))
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--max-rss-bytes", type=int, default=1 << 30,
                   help="largest buffer whose RSS growth is measured (bigger ones: nbytes only)")
    p.add_argument("--no-throughput", action="store_true")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not a measurement")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads on the CPU (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    output_flags(p, SECTION)
    args = p.parse_args(argv)
    plan = CPU_PLAN
    if args.quick:
        plan, args.reps, args.predict_batch = QUICK_PLAN, 1, 8
        args.capacities = [100, 1000]
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = {"auto": ["cpu"] + (["cuda"] if torch.cuda.is_available() else []), "cpu": ["cpu"],
               "cuda": ["cuda"]}[args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        p.error("--device cuda, but torch.cuda.is_available() is False here")
    t0 = time.perf_counter()
    info = machine()
    print(f"machine: {machine_line(info)}", file=sys.stderr)
    out = {"study": "scale: ResNet18 throughput, replay memory per sample", "command": command_line(argv),
           "machine": info, "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "plan_cpu": {str(k): dict(zip(("train_batch", "train_steps", "predict_steps"), v)) for k, v in plan.items()},
           "throughput": [], "memory": []}
    if not args.no_throughput:
        for dev in devices:
            for px in args.pixels:
                batch, tsteps, psteps = plan.get(px, plan[min(plan, key=lambda k: abs(k - px))])
                if dev == "cuda":
                    tsteps, psteps = (2, 2) if args.quick else CUDA_STEPS
                    batch = batch if px < 224 or args.quick else 32
                out["throughput"].append(throughput(px, dev, batch, tsteps, psteps, args.predict_batch, args.reps,
                                                    args.seed))
    if not args.no_memory:
        for name in args.shapes:
            for cap in args.capacities:
                row = memory_point(name, SHAPES[name], cap, args.max_rss_bytes)
                out["memory"].append(row)
                print(f"memory {name:9s} × {cap:5d}: {fmt_bytes(row['nbytes_total'])} "
                      f"({row['nbytes_per_sample']:.0f} B/sample), RSS growth {fmt_bytes(row['rss_growth_bytes'])}",
                      file=sys.stderr)
    out["wall_seconds"] = time.perf_counter() - t0
    publish(out, args.out, args.markdown)
    return 0



if __name__ == "__main__":
    sys.exit(entry_point(main, publish, "scale"))
