"""Service overhead: the same stream through clstream-server and through the in-process engine.

    python benchmarks/service_overhead.py            # default: 3 repetitions, batch 10 and 64, ~3-4 min on 2 cores
    python benchmarks/service_overhead.py --quick    # a smoke test: small buckets, 1 repetition

Writes benchmarks/results/service_overhead.json, prints a table and rewrites the `service_overhead`
section of BENCHMARKS.md.

The stream: digits-rotated (5 buckets), the MLP, replay (reservoir memory), SGD lr 0.1, one pass,
seed per repetition, one torch thread on both sides (the server child gets OMP_NUM_THREADS=1 from
client.local_server, the benchmark process sets torch.set_num_threads(1)).

Four ways, back to back in every repetition (their order rotates):
- inproc: cl_engine.run_stream; time = its train_seconds (the observe loop incl. fetching each
  batch, plus end-of-bucket consolidation; evaluation excluded).
- service-tensor: a fresh `clstream-server` child process (client.local_server) per run; this process
  registers the held-out sets, then per bucket streams the very batches run_stream uses
  (cl_engine.schedule.bucket_batches, bucket.train.batch) as raw float32 tensors with their sample ids,
  as the replay client sends them, over one Train stream, at most 16 batches unacknowledged
  (client.replay's default), then calls EndBucket.
  Time = wall time of the Train streams (first request built → last ack). EndBucket is left out: it
  evaluates the held-out sets (excluded on both sides) and consolidating a reservoir memory is a no-op.
- service-process: service-tensor with `--learner-process` (the training worker in a process of its
  own, fed through a pipe; the weights reach the serving snapshots through shared memory).
- service-png: the same as service-tensor, each sample sent as an 8-bit grayscale PNG that the server decodes with its
  image preprocessing (resize-crop, mode L, scaled to [0, 1]). The PNGs are encoded before the clock
  starts (a camera or an upload delivers files already encoded); the encoding time is reported apart.

The tensor variant must learn exactly what the in-process run learns: the largest difference between
the two accuracy matrices is reported (0 expected). PNG quantises 17-level digits to 8 bits, so it
differs slightly.

Where the time goes: every service run scrapes the server's /metrics after the stream
(clstream_train_step_seconds = Learner.observe inside the worker, clstream_snapshots_total), and
the client measures its own encoding. One more run per batch size goes to an instrumented server
(this script in `_serve_timed` mode: the real server.main with timers around decode, observe,
snapshot publication, status publication, and cProfile on the training worker thread); its
per-batch times are shares under a profiler, not speeds.
"""
from __future__ import annotations

import io
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "proto")]  # this checkout, whatever the venv has installed

from benchmarks.common import (  # noqa: E402
    entry_point, machine, markdown_table, median, output_flags, scrape, section_head, study_parser, study_results,
    write_markdown, write_results)

SECTION = "service_overhead"
VARIANTS = ("inproc", "service-tensor", "service-process", "service-png")
MAX_IN_FLIGHT = 16


def learner_kwargs(args, seed: int) -> dict:
    return dict(model="mlp", strategy="replay", lr=args.lr, buffer_capacity=args.buffer_capacity, seed=seed,
                device="cpu")


def server_args(stream, args, seed: int) -> list[str]:
    kw = learner_kwargs(args, seed)
    return ["--model", kw["model"], "--strategy", kw["strategy"], "--lr", str(kw["lr"]),
            "--buffer-capacity", str(kw["buffer_capacity"]), "--seed", str(seed), "--device", "cpu",
            "--input-shape", *map(str, stream.input_shape), "--class-names", *stream.class_names,
            "--checkpoint-every-batches", "0", "--log-level", "warning"]


# -- in-process -----------------------------------------------------------------------------------

def run_inproc(stream, args, seed: int, batch_size: int) -> dict:
    from cl_engine import LearnerConfig, run_stream

    torch.manual_seed(seed)
    report = run_stream(stream, LearnerConfig(**learner_kwargs(args, seed)), batch_size=batch_size, epochs=1,
                        progress=False)
    n = report["samples_trained"]
    return {"samples": n, "batches": report["batches_trained"], "seconds": report["train_seconds"],
            "samples_per_second": n / report["train_seconds"], "R": report["accuracy_matrix"],
            "b": report["initial_accuracy"], "eval_seconds": report["eval_seconds"]}


# -- through the service --------------------------------------------------------------------------

def png_bytes(x: torch.Tensor) -> list[bytes]:
    """One 8-bit PNG per sample of x [n, 1, H, W] in [0, 1]."""
    from PIL import Image

    out = []
    for a in (x.clamp(0, 1).mul(255).round().to(torch.uint8).numpy()):
        buf = io.BytesIO()
        Image.fromarray(a[0], mode="L").save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process and its live children, all their threads (from /proc;
    None where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                    for c in (task / "children").read_text().split()]
    except OSError:
        return None
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(process_cpu_seconds(c) or 0.0 for c in children)


class TimedServer:
    """client.local_server.LocalServer running this script's `_serve_timed` mode instead of server.main."""

    def __new__(cls, args, out_json: Path, **kw):
        from client.local_server import LocalServer

        class _Timed(LocalServer):
            def command(self):
                base = super().command()  # [python, -m, server.main, ...flags]
                return [base[0], str(Path(__file__).resolve()), "_serve_timed", str(out_json), *base[3:]]

        return _Timed(args, **kw)


def run_service(stream, args, seed: int, batch_size: int, variant: str, timed_json: Path | None = None,
                log_dir: Path | None = None, cprofile: bool = False) -> dict:
    from client import wire
    from client.api import Client, Schema
    from client.local_server import LocalServer
    from cl_engine.schedule import bucket_batches
    from clstream_proto import continual_learner_pb2 as pb
    from clstream_proto import continual_learner_pb2_grpc as pb_grpc

    sargs = server_args(stream, args, seed) + (["--learner-process"] if variant == "service-process" else [])
    log_path = (log_dir / f"server-{variant}-{batch_size}-{seed}.log") if log_dir else None
    if timed_json:
        env = {**os.environ, "CLSTREAM_BENCH_CPROFILE": "1" if cprofile else "0"}
        server = TimedServer(sargs, timed_json, log_path=log_path, env=env)
    else:
        server = LocalServer(sargs, log_path=log_path)
    server.start()
    try:
        client = Client(server.target, timeout=120)
        stub = pb_grpc.ContinualLearnerStub(client.channel)
        schema = Schema(tuple(stream.class_names), tuple(stream.input_shape))
        status = client.status()
        config_mismatch = {k: (status.config.get(k), v) for k, v in learner_kwargs(args, seed).items()
                           if status.config.get(k) != v}
        for j, bucket in enumerate(stream.buckets):
            client.register_eval_set(j, bucket.test.x, bucket.test.labels, schema=schema)
        stream_id, seq = f"bench-{variant}", 0
        train_seconds, encode_seconds, png_seconds, samples, batches, R = 0.0, 0.0, 0.0, 0, 0, []
        client_cpu, server_cpu = 0.0, 0.0  # CPU seconds of each process during the Train streams
        for i, bucket in enumerate(stream.buckets):
            plan = [(*bucket.train.batch(index, train=True), index) for index in  # ids: as the replay client
                    bucket_batches(len(bucket.train), batch_size, 1, seed, i)]
            if variant == "service-png":
                t0 = time.perf_counter()
                plan = [(png_bytes(x), y, ids) for x, y, ids in plan]
                png_seconds += time.perf_counter() - t0
            window = threading.Semaphore(MAX_IN_FLIGHT)
            first = seq + 1

            def requests():
                nonlocal encode_seconds
                for k, (x, y, ids) in enumerate(plan):
                    window.acquire()
                    t0 = time.perf_counter()
                    samples_msg = wire.encode_images(x) if variant == "service-png" else wire.encode_samples(x)
                    msg = pb.TrainBatch(stream_id=stream_id, sequence=first + k, bucket=i, samples=samples_msg,
                                        labels=wire.labels_list(y), sample_ids=wire.labels_list(ids))
                    encode_seconds += time.perf_counter() - t0
                    yield msg

            t0, c0, s0 = time.perf_counter(), time.process_time(), process_cpu_seconds(server.process.pid)
            for ack in stub.Train(requests()):
                window.release()
            train_seconds += time.perf_counter() - t0
            client_cpu += time.process_time() - c0
            s1 = process_cpu_seconds(server.process.pid)
            server_cpu = None if s0 is None or s1 is None or server_cpu is None else server_cpu + s1 - s0
            seq += len(plan)
            batches += len(plan)
            samples += sum(len(y) for _, y, _ in plan)
            R.append(client.end_bucket(i, bucket_size=len(bucket.train)).row)
        final = client.status()
        metrics = scrape(server.metrics_url)
        client.close()
    finally:
        server.stop()
    out = {"samples": samples, "batches": batches, "seconds": train_seconds, "samples_per_second": samples / train_seconds,
           "client_encode_seconds": encode_seconds, "png_encode_seconds_untimed": png_seconds,
           "client_cpu_seconds": client_cpu, "server_cpu_seconds": server_cpu,
           "R": R, "b": final.initial_accuracy, "samples_trained_server": final.samples_trained,
           "train_step_seconds_sum": metrics.get("clstream_train_step_seconds_sum"),
           "train_step_count": metrics.get("clstream_train_step_seconds_count"),
           "snapshots": metrics.get("clstream_snapshots_total"), "config_mismatch": config_mismatch}
    if timed_json is not None and timed_json.exists():
        out["timed"] = json.loads(timed_json.read_text())
    return out


# -- the instrumented server (runs in the child process) ------------------------------------------

def serve_timed(out_path: str, argv: list[str]) -> int:
    """server.main with timers around the parts of a Train batch and cProfile on the worker thread."""
    import cProfile
    import pstats
    from collections import defaultdict

    from cl_engine.learner import Learner
    from server import main as server_main
    from server import servicer as SV
    from server import snapshot as S
    from server import worker as W

    acc: dict[str, list] = defaultdict(lambda: [0.0, 0])

    def timed(owner, name: str, key: str) -> None:
        f = getattr(owner, name)

        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                d = acc[key]
                d[0] += time.perf_counter() - t0
                d[1] += 1
        setattr(owner, name, wrapper)

    timed(SV, "decode_samples", "decode (gRPC reader thread)")
    timed(SV.ContinualLearnerServicer, "_train_op", "validate+decode (gRPC reader thread)")
    timed(W.TrainingWorker, "submit", "enqueue (gRPC reader thread)")
    timed(W.TrainingWorker, "_apply", "apply op (worker)")
    timed(Learner, "observe", "observe (worker)")
    timed(W.TrainingWorker, "_after", "publish after op (worker)")
    timed(S.Snapshot, "of", "snapshot copy (worker)")
    timed(W.TrainingWorker, "_build_status", "status build (worker)")
    profile = {"stats": None, "wall": 0.0}
    run = W.TrainingWorker._run
    use_cprofile = os.environ.get("CLSTREAM_BENCH_CPROFILE") == "1"

    def profiled_run(self):
        prof = cProfile.Profile() if use_cprofile else None
        t0 = time.perf_counter()
        if prof:
            prof.enable()
        try:
            run(self)
        finally:
            if prof:
                prof.disable()
            profile["wall"] = time.perf_counter() - t0
            profile["stats"] = prof
    W.TrainingWorker._run = profiled_run
    code = server_main.main(argv)
    top = []
    if profile["stats"] is not None:
        st = pstats.Stats(profile["stats"])
        rows = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:30]  # by own time
        for (file, line, fn), (cc, nc, tt, ct, _callers) in rows:
            top.append({"function": f"{Path(file).name}:{line}({fn})", "calls": nc, "own_seconds": tt,
                        "cumulative_seconds": ct})
    Path(out_path).write_text(json.dumps({"parts": {k: {"seconds": v[0], "calls": v[1]} for k, v in acc.items()},
                                          "worker_thread_wall_seconds": profile["wall"], "worker_top": top}, indent=1))
    return code


# -- the study ------------------------------------------------------------------------------------

def max_abs_diff_R(runs: list[dict], inproc: dict[int, dict]) -> float:
    """Largest |R − R_in-process| over the runs, each against the in-process run of its repetition."""
    return max((float(np.nanmax(np.abs(np.array(r["R"]) - np.array(inproc[r["rep"]]["R"]))))
                for r in runs if r["rep"] in inproc), default=float("nan"))


def summarise(runs: list[dict], batch_sizes) -> list[dict]:
    rows = []
    for bs in batch_sizes:
        row = {"batch_size": bs}
        for v in VARIANTS:
            rs = [r for r in runs if r["batch_size"] == bs and r["variant"] == v]
            row[f"sps_{v}"] = median([r["samples_per_second"] for r in rs])
            row[f"sps_{v}_all"] = [r["samples_per_second"] for r in rs]
        inproc = {r["rep"]: r for r in runs if r["batch_size"] == bs and r["variant"] == "inproc"}
        for v in VARIANTS[1:]:
            pairs = [r["samples_per_second"] / inproc[r["rep"]]["samples_per_second"] for r in runs
                     if r["batch_size"] == bs and r["variant"] == v and r["rep"] in inproc]
            row[f"ratio_{v}"] = median(pairs)
            row[f"ratio_{v}_all"] = pairs
        svc = [r for r in runs if r["batch_size"] == bs and r["variant"] == "service-tensor"]
        png = [r for r in runs if r["batch_size"] == bs and r["variant"] == "service-png"]
        ip = list(inproc.values())
        row["us_per_batch_inproc"] = median([1e6 * r["seconds"] / r["batches"] for r in ip])
        row["us_per_batch_png"] = median([1e6 * r["seconds"] / r["batches"] for r in png])
        row["us_png_encode_untimed"] = median([1e6 * r["png_encode_seconds_untimed"] / r["batches"] for r in png])
        for v in ("service-tensor", "service-process"):
            rs = [r for r in runs if r["batch_size"] == bs and r["variant"] == v]
            row[f"us_per_batch_{v}"] = median([1e6 * r["seconds"] / r["batches"] for r in rs])
            row[f"us_observe_{v}"] = median([1e6 * r["train_step_seconds_sum"] / r["train_step_count"] for r in rs])
            row[f"us_encode_client_{v}"] = median([1e6 * r["client_encode_seconds"] / r["batches"] for r in rs])
            row[f"snapshots_per_batch_{v}"] = median([r["snapshots"] / r["batches"] for r in rs])
            row[f"us_cpu_server_{v}"] = median([1e6 * r["server_cpu_seconds"] / r["batches"] for r in rs
                                                if r.get("server_cpu_seconds") is not None])
            row[f"us_cpu_client_{v}"] = median([1e6 * r["client_cpu_seconds"] / r["batches"] for r in rs
                                                if r.get("client_cpu_seconds") is not None])
        row["max_abs_diff_R_tensor"] = max_abs_diff_R(svc, inproc)
        row["max_abs_diff_R_process"] = max_abs_diff_R(
            [r for r in runs if r["batch_size"] == bs and r["variant"] == "service-process"], inproc)
        row["max_abs_diff_R_png"] = max_abs_diff_R(png, inproc)
        row["goal_met"] = row["ratio_service-tensor"] >= 0.9
        row["goal_met_process"] = row["ratio_service-process"] >= 0.9
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    yes = lambda met: "yes" if met else "no"  # noqa: E731
    return markdown_table(
        ["batch", "in-process samples/s", "service (tensors) samples/s", "ratio",
         "service (tensors, learner process) samples/s", "ratio", "service (PNG) samples/s", "ratio",
         "≥ 0.9 (tensors / learner process)", "max abs R diff tensors / learner process / PNG"],
        [[r["batch_size"], f"{r['sps_inproc']:.0f}", f"{r['sps_service-tensor']:.0f}",
          f"**{r['ratio_service-tensor']:.2f}**", f"{r['sps_service-process']:.0f}",
          f"**{r['ratio_service-process']:.2f}**", f"{r['sps_service-png']:.0f}", f"**{r['ratio_service-png']:.2f}**",
          f"{yes(r['goal_met'])} / {yes(r['goal_met_process'])}",
          f"{r['max_abs_diff_R_tensor']:.4f} / {r['max_abs_diff_R_process']:.4f} / {r['max_abs_diff_R_png']:.3f}"]
         for r in rows])


def parts_table(rows: list[dict], timed: dict) -> str:
    lines = ["| batch | learner | per batch: in-process | service wall | server CPU (all threads, both processes) "
             "| client CPU (all threads) | observe in server (histogram) | client encode | snapshots per batch "
             "| PNG encode (outside the clock) |", "|" + "---|" * 10]
    us = lambda v: "n/a" if v is None or v != v else f"{v:.0f} µs"  # noqa: E731 (NaN: not measured)
    for r in rows:
        for v, learner in (("service-tensor", "thread"), ("service-process", "process")):
            lines.append(f"| {r['batch_size']} | {learner} | {r['us_per_batch_inproc']:.0f} µs "
                         f"| {r[f'us_per_batch_{v}']:.0f} µs | {us(r.get(f'us_cpu_server_{v}'))} "
                         f"| {us(r.get(f'us_cpu_client_{v}'))} | {r[f'us_observe_{v}']:.0f} µs "
                         f"| {r[f'us_encode_client_{v}']:.0f} µs | {r[f'snapshots_per_batch_{v}']:.2f} "
                         f"| {r['us_png_encode_untimed']:.0f} µs |")
    if timed:
        lines += ["", "Instrumented server (timers around each part, tensors; µs per training batch; the worker "
                  "parts nest: apply op ⊃ observe, publish after op ⊃ snapshot copy + status build):", "",
                  "| batch | " + " | ".join(next(iter(timed.values()))["parts"]) + " | worker thread wall |",
                  "|" + "---|" * (2 + len(next(iter(timed.values()))["parts"]))]
        for bs, t in sorted(timed.items(), key=lambda kv: int(kv[0])):
            n = t["batches"]
            lines.append(f"| {bs} | " + " | ".join(f"{1e6 * p['seconds'] / n:.0f}" for p in t["parts"].values())
                         + f" | {1e6 * t['worker_thread_wall_seconds'] / n:.0f} |")
    return "\n".join(lines)


def cprofile_lines(cp: dict, top: int = 10) -> list[str]:
    if not cp.get("worker_top"):
        return []
    n = cp["batches"]
    lines = ["", f"cProfile of the training worker thread (batch {cp['batch_size']}; own time per training batch, "
             "inflated by the profiler, Python-heavy code most):", "", "| function | calls per batch | own µs | cumulative µs |",
             "|---|---|---|---|"]
    for r in cp["worker_top"][:top]:
        lines.append(f"| `{r['function']}` | {r['calls'] / n:.1f} | {1e6 * r['own_seconds'] / n:.0f} "
                     f"| {1e6 * r['cumulative_seconds'] / n:.0f} |")
    return lines


def publish(out: dict, path: Path, markdown: Path) -> None:
    st = out["settings"]
    rows = summarise(out["runs"], st["batch_sizes"])
    out["summary"] = rows
    md = table(rows)
    print(md)
    write_results(out, path)
    if str(markdown) == "-":
        return
    loads = [r["loadavg_1min_before"] for r in out["runs"]]
    timed = {str(k): v for k, v in out.get("timed", {}).items()}
    body = "\n".join(section_head(
        "### Service overhead: clstream-server vs the in-process engine (`benchmarks/service_overhead.py`)", out, loads,
        "; one torch thread in the server and in the benchmark process",
        quick=" — QUICK run (small buckets), not a result") + [
        f"Stream: digits-rotated, {out['stream']['buckets']} buckets × {out['stream']['train_per_bucket']} training "
        f"samples, MLP, replay (reservoir, {st['buffer_capacity']}), SGD lr {st['lr']}, one pass. Service: a fresh "
        f"server process per run on loopback, {MAX_IN_FLIGHT} batches in flight; time = Train stream wall time. "
        "In-process: run_stream's train_seconds. Evaluation excluded on both sides.", "",
        md, "",
        f"Medians over {st['reps']} repetitions; ratios are medians of the per-repetition ratios "
        "(service / in-process, same seed, back to back).", "",
        "Where a batch's time goes:", "",
        parts_table(rows, timed),
        *cprofile_lines(out.get("cprofile") or {}),
    ])
    write_markdown(markdown, body, SECTION)


def main(argv=None) -> int:
    from cl_engine import build_stream
    from cl_engine.streams import StreamOptions

    p = study_parser(__doc__)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[10, 64])
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--buffer-capacity", type=int, default=500)
    p.add_argument("--samples-per-bucket", type=int, default=None, help="default: the whole stream (1258)")
    p.add_argument("--quick", action="store_true", help="smoke test: 300 samples per bucket, 1 repetition")
    p.add_argument("--no-profile", action="store_true", help="skip the instrumented-server runs")
    p.add_argument("--seed", type=int, default=0)
    output_flags(p, SECTION)
    args = p.parse_args(argv)
    if args.quick:
        args.reps, args.samples_per_bucket = 1, args.samples_per_bucket or 300
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    info = machine()
    stream = build_stream("digits-rotated", StreamOptions(seed=0, samples_per_bucket=args.samples_per_bucket))
    print(f"machine: {info['nproc']} cores, {info['cpu_model']}; torch {info['torch']}; stream "
          f"{len(stream)} × {len(stream.buckets[0].train)}", file=sys.stderr)
    run_inproc(stream, args, args.seed, args.batch_sizes[0])  # warm-up (imports, allocator), discarded
    runs, k = [], 0
    with tempfile.TemporaryDirectory(prefix="clstream-bench-") as tmp:
        for rep in range(args.reps):
            seed = args.seed + rep
            for bs in args.batch_sizes:
                order = VARIANTS[k % len(VARIANTS):] + VARIANTS[:k % len(VARIANTS)]
                k += 1
                for v in order:
                    load = os.getloadavg()[0]
                    r = run_inproc(stream, args, seed, bs) if v == "inproc" else run_service(
                        stream, args, seed, bs, v, log_dir=Path(tmp))
                    runs.append({"rep": rep, "seed": seed, "batch_size": bs, "variant": v, "loadavg_1min_before": load,
                                 **r})
                    print(f"rep {rep + 1}/{args.reps} batch {bs:3d} {v:15s}: {r['samples_per_second']:8.0f} samples/s "
                          f"({r['seconds']:.2f}s, load {load:.1f})", file=sys.stderr)
        timed, cprofile = {}, {}
        if not args.no_profile:
            for bs in args.batch_sizes:  # timers only: close to the real speeds
                path = Path(tmp) / f"timed-{bs}.json"
                r = run_service(stream, args, args.seed, bs, "service-tensor", timed_json=path, log_dir=Path(tmp))
                timed[bs] = {**r.get("timed", {}), "batches": r["batches"], "samples_per_second": r["samples_per_second"]}
                print(f"instrumented server, batch {bs}: {r['samples_per_second']:.0f} samples/s", file=sys.stderr)
            bs = args.batch_sizes[0]  # and cProfile on the worker thread, for the list of functions
            path = Path(tmp) / f"cprofile-{bs}.json"
            r = run_service(stream, args, args.seed, bs, "service-tensor", timed_json=path, log_dir=Path(tmp), cprofile=True)
            cprofile = {"batch_size": bs, "batches": r["batches"], "samples_per_second": r["samples_per_second"],
                        "worker_top": r.get("timed", {}).get("worker_top", [])}
    out = study_results("service overhead: clstream-server vs in-process run_stream", argv, info, args, t_start,
                        stream={"name": "digits-rotated", "buckets": len(stream),
                                "train_per_bucket": len(stream.buckets[0].train)},
                        runs=runs, timed=timed, cprofile=cprofile)
    publish(out, args.out, args.markdown)
    return 0



if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_serve_timed":
        sys.exit(serve_timed(sys.argv[2], sys.argv[3:]))
    sys.exit(entry_point(main, publish, "service_overhead"))
