"""Images through the service: a CLEAR-layout stream of JPEG photos, conv model, in-process against
clstream-server with the replay client sending uint8 tensors or the files themselves (`--send-files`),
the learner in the server's thread or in a process of its own.

    python benchmarks/service_images.py            # default: 3 repetitions, about 5 min on 2 cores
    python benchmarks/service_images.py --quick    # a smoke test: 1 repetition, small buckets

Writes benchmarks/results/service_images.json, prints a table and rewrites the `service_images`
section of BENCHMARKS.md.

The fixture is made here (in a temporary folder, by cl_engine.streams.clear_fixture): the current CLEAR
release's train/ layout, photo-like JPEGs (`--photo` 320×240 RGB, smooth random content, a colour cast
per class, quality 90) of 3 classes, `--buckets` buckets; streaming protocol, `--image-size` 32.
Learner: reduced-resnet18, replay with a reservoir memory of 100 (its end of bucket is a no-op, so the
two sides' times hold the same work), the CLEAR stream's views (uint8 stored, ImageNet normalisation,
crop and flip at every use), SGD at the defaults, seed per repetition, one pass, one torch thread in
every process.

Five ways, back to back in every repetition (their order rotates):
- inproc: cl_engine.run_stream; time = its train_seconds (fetching and decoding every batch from the
  files, the steps, the memory's consolidation) plus the accuracy row before training, timed apart on
  a fresh learner: the server measures that row inside its first Train batch, so both sides hold it.
- tensor-thread / tensor-process: a fresh `clstream-server` child (client.local_server) per run, the
  replay client (client.replay.Replay) sending each batch's decoded uint8 pixels; learner in the
  server's thread, or with `--learner-process --learner-nice 0` (the default niceness, +10, makes the
  learner yield to every other job on a shared machine, which measures the machine, not the service).
- files-thread / files-process: the same with `send_files`: each training image's JPEG as on disk,
  decoded by the server where the batch is applied.
Service time = the replay client's train_seconds: wall time of its Train streams (first request
built, files read or images decoded by the client included, to the last ack); registering the
held-out sets and EndBucket (evaluation) are left out, as on the in-process side. The server's
/metrics give the time its learner spent in Learner.observe (`observe_seconds`, the row before
training included) and the snapshots it published.
Goal (issue 24): every service way ≥ 0.9× the in-process images/s.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "proto")]  # this checkout, whatever the venv has installed

from benchmarks.common import (  # noqa: E402
    command_line, entry_point, machine, median, scrape, section_head, write_markdown, write_results)
from cl_engine.streams.clear_fixture import write_clear_fixture  # noqa: E402

SECTION = "service_images"
VARIANTS = ("inproc", "tensor-thread", "tensor-process", "files-thread", "files-process")
GOAL = 0.9
CLASSES = ["BACKGROUND", "bus", "camera"]


def learner_kwargs(seed: int) -> dict:
    return dict(model="reduced-resnet18", strategy="replay", retention="reservoir", buffer_capacity=100, seed=seed,
                device="cpu", augment="crop-flip", uint8_inputs="imagenet")


def run_inproc(stream, seed: int, batch_size: int) -> dict:
    from cl_engine import Learner, LearnerConfig, run_stream

    config = LearnerConfig(**learner_kwargs(seed))
    fresh = Learner(config, stream.input_shape, stream.num_classes)  # the row before training, timed apart
    for j, bucket in enumerate(stream.buckets):
        fresh.register_eval_set(j, bucket.test)
    t0 = time.perf_counter()
    fresh.evaluate_all()
    initial = time.perf_counter() - t0
    report = run_stream(stream, config, batch_size=batch_size, progress=False)
    return {"samples": report["samples_trained"], "seconds": report["train_seconds"] + initial,
            "initial_row_seconds": initial, "R": report["accuracy_matrix"]}


def run_service(stream, seed: int, batch_size: int, variant: str, log_dir: Path) -> dict:
    from client.api import Client
    from client.local_server import LocalServer
    from client.replay import Replay, ReplayOptions

    kw = learner_kwargs(seed)
    args = ["--model", kw["model"], "--strategy", kw["strategy"], "--retention", kw["retention"],
            "--buffer-capacity", str(kw["buffer_capacity"]), "--seed", str(seed), "--device", "cpu",
            "--image-transform", "imagenet", "--checkpoint-every-batches", "0", "--log-level", "warning"]
    if variant.endswith("-process"):  # at the in-process run's niceness: the default +10 yields to other jobs
        args += ["--learner-process", "--learner-nice", "0"]
    with LocalServer(args, log_path=log_dir / f"server-{variant}-{seed}.log") as server:
        with Client(server.target, timeout=300) as client:
            options = ReplayOptions(batch_size=batch_size, query_every=0, progress=False,
                                    send_files=variant.startswith("files"))
            r = Replay(client, stream, options).run()
        metrics = scrape(server.metrics_url)
    samples = sum(a["samples"] for a in r.acks.values())
    return {"samples": samples, "seconds": r.train_seconds, "R": [e["row"] for e in r.bucket_ends],
            "observe_seconds": metrics.get("clstream_train_step_seconds_sum"),  # Learner.observe in the worker
            "snapshots": metrics.get("clstream_snapshots_total")}


def summarise(runs: list[dict]) -> list[dict]:
    by = {(r["rep"], r["variant"]): r for r in runs}
    reps = sorted({r["rep"] for r in runs})
    rows = []
    for v in VARIANTS:
        mine = [by[(k, v)] for k in reps if (k, v) in by]
        ratios = [by[(k, v)]["images_per_second"] / by[(k, "inproc")]["images_per_second"] for k in reps
                  if (k, v) in by and (k, "inproc") in by]
        diffs = [float(np.abs(np.array(by[(k, v)]["R"]) - np.array(by[(k, "inproc")]["R"])).max()) for k in reps
                 if (k, v) in by and (k, "inproc") in by]
        rows.append({"variant": v, "images_per_second": median([r["images_per_second"] for r in mine]),
                     "seconds": median([r["seconds"] for r in mine]), "ratio": median(ratios),
                     "ratios": ratios, "max_abs_diff_R": max(diffs) if diffs else None,
                     "observe_seconds": median([r.get("observe_seconds") or math.nan for r in mine]),
                     "goal_met": None if v == "inproc" else bool(median(ratios) >= GOAL)})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| way | images/s | train seconds | server's Learner.observe seconds | service / in-process | ≥ 0.9× "
             "| max \\|ΔR\\| vs in-process |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "1" if r["variant"] == "inproc" else f"{r['ratio']:.2f} ({', '.join(f'{x:.2f}' for x in r['ratios'])})"
        met = "" if r["goal_met"] is None else ("met" if r["goal_met"] else "**not met**")
        diff = "" if r["variant"] == "inproc" else f"{r['max_abs_diff_R']:.2g}"
        observe = "" if math.isnan(r["observe_seconds"]) else f"{r['observe_seconds']:.2f}"
        lines.append(f"| {r['variant']} | {r['images_per_second']:.1f} | {r['seconds']:.2f} | {observe} | {ratio} | {met} "
                     f"| {diff} |")
    return "\n".join(lines)


def contention_note(rows: list[dict]) -> str:
    """Said when the server's learning alone took less time than the whole in-process run: on a shared
    machine only a larger CPU share explains it, so ratios above 1 are not a service speed-up."""
    inproc = next(r["seconds"] for r in rows if r["variant"] == "inproc")
    if not any(r["observe_seconds"] < inproc for r in rows if r["variant"] != "inproc"):
        return ""
    return (" Here the server's Learner.observe alone took less time than the in-process run of the same steps "
            "(its decoding aside), which only a larger share of the shared CPUs explains (several processes "
            "against one): ratios above 1 measure that contention, not a service speed-up. What this run "
            "supports is the goal (≥ 0.9×) and equal matrices, not a margin; a quiet machine would give the "
            "precise ratio.")


def publish(out: dict, path: Path, markdown: Path) -> None:
    rows = summarise(out["runs"])
    out["summary"] = rows
    md = table(rows)
    print(md)
    write_results(out, path)
    if str(markdown) == "-":
        return
    st, fx = out["settings"], out["fixture"]
    loads = [r["loadavg_1min_before"] for r in out["runs"]]
    body = "\n".join(section_head(
        "### Images through the service: JPEG files or tensors vs in-process (`benchmarks/service_images.py`)",
        out, loads, "; one torch thread in every process") + [
        f"Workload: CLEAR layout made by the script, {fx['buckets']} buckets × {fx['per_bucket']} JPEG photos "
        f"({fx['photo'][0]}×{fx['photo'][1]}, {fx['mean_file_bytes'] / 1024:.0f} KiB on average), 3 classes, "
        f"{st['image_size']} px, reduced-resnet18, replay (reservoir 100), crop-flip at every use, batch "
        f"{st['batch_size']}, one pass. Service: a fresh server per run, the replay client on loopback; time = "
        "its Train streams' wall time; in-process: run_stream's train_seconds; evaluation excluded on both.", "",
        md, "",
        f"Medians over {st['reps']} repetitions (per-repetition ratios in brackets, same seed, back to back). "
        "Goal (issue 24): service ≥ 0.9× in-process images/s: "
        + "; ".join(f"{r['variant']} {'met' if r['goal_met'] else 'not met'} ({r['ratio']:.2f}×)"
                    for r in rows if r["goal_met"] is not None) + ". "
        "The service side runs the client and the server (and with `--learner-process` the learner) as separate "
        "processes: on 2 shared cores they compete with each other and with other jobs, while the in-process "
        "run is one process. The server's Learner.observe seconds (the row before training included) against "
        "the service's wall time show how much of it is the learning itself; the rest is the server's "
        "decoding (files), the gRPC path and the snapshot publications." + contention_note(rows),
    ])
    write_markdown(markdown, body, SECTION)


def main(argv=None) -> int:
    from cl_engine import build_stream
    from cl_engine.streams import StreamOptions

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--buckets", type=int, default=3)
    p.add_argument("--per-class", type=int, default=40, help="images per class and bucket (3 classes)")
    p.add_argument("--photo", type=int, nargs=2, default=[320, 240], metavar=("W", "H"))
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke test: 1 repetition, 10 images per class and bucket")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "service_images.json")
    p.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md", help="'-' for none")
    args = p.parse_args(argv)
    if args.quick:
        args.reps, args.per_class = 1, 10
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    info = machine()
    runs = []
    with tempfile.TemporaryDirectory(prefix="clstream-bench-images-") as tmp:
        root = Path(tmp) / "clear"
        write_clear_fixture(root, args.buckets, CLASSES, args.per_class, [args.photo], args.seed)
        sizes = [p.stat().st_size for p in root.rglob("*.jpg")]
        stream = build_stream(f"clear:{root}", StreamOptions(image_size=args.image_size))
        run_inproc(stream, args.seed, args.batch_size)  # warm-up (imports, allocator, page cache), discarded
        for rep in range(args.reps):
            seed = args.seed + rep
            order = VARIANTS[rep % len(VARIANTS):] + VARIANTS[:rep % len(VARIANTS)]
            for v in order:
                load = os.getloadavg()[0]
                r = (run_inproc(stream, seed, args.batch_size) if v == "inproc"
                     else run_service(stream, seed, args.batch_size, v, Path(tmp)))
                r["images_per_second"] = r["samples"] / r["seconds"]
                runs.append({"rep": rep, "seed": seed, "variant": v, "loadavg_1min_before": load, **r})
                print(f"rep {rep + 1}/{args.reps} {v:15s}: {r['images_per_second']:7.1f} images/s "
                      f"({r['seconds']:.2f}s, load {load:.1f})", file=sys.stderr)
    out = {"study": "images through the service vs in-process", "command": command_line(argv), "machine": info,
           "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "fixture": {"buckets": args.buckets, "per_bucket": 3 * args.per_class, "photo": args.photo,
                       "mean_file_bytes": sum(sizes) / len(sizes)},
           "goal_ratio": GOAL, "runs": runs, "wall_seconds": time.perf_counter() - t_start}
    publish(out, args.out, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(entry_point(main, publish, "service_images"))
