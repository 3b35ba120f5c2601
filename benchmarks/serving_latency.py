"""Serving while learning: Predict latency and throughput with the model idle and while a stream trains it.

    python benchmarks/serving_latency.py            # default: 1, 4, 16 clients, 4 s per phase, 2 repetitions, ~5 min
    python benchmarks/serving_latency.py --quick    # a smoke test: 1.5 s per phase, 1 repetition

Writes benchmarks/results/serving_latency.json, prints a table and rewrites the `serving_latency`
section of BENCHMARKS.md.

A clstream-server child process (client.local_server; MLP, replay, one torch thread, digits
schema 1×8×8, 10 classes) serves each repetition of each learner mode: `thread` (the training worker
is a thread of the server, the default) and `process` (`--learner-process`: the worker in a process
of its own, weights shared with the serving snapshots). The two alternate which goes first. Each
server is trained on a few batches first, so a snapshot exists.

Predict clients are separate processes (multiprocessing, spawn), not threads: a Python gRPC client
spends most of a call in the interpreter (building the request, parsing the reply), and 16 client
threads in one process would measure the client's GIL, not the server. Each process opens its own
channel, sends one warm-up call, waits for the common start signal, then calls Predict back to back
(one request in flight per client, `--predict-samples` samples each, top-1) for `--seconds`,
recording every call's wall latency. Throughput = successful calls / phase length, summed over
clients.

A phase is either `idle` (nothing else runs) or `training`: a trainer process streams the digits
bucket 0 over and over (batch `--batch-size`, 16 batches in flight, as client.replay) from half a
second before the predict clients start until they stop; its samples/s are recorded too. In each
repetition and concurrency level, both phases run back to back, alternating which goes first. The
table pools the latencies of all repetitions: p50 / p99 per phase, and p99 training / p99 idle (goal
≤ 2), per learner mode. The server's own view, clstream_predict_seconds (handler time, no network, no client), is
scraped before and after each phase: its mean per call is reported beside the client's.

The server takes `--max-concurrent-predictions` max(32, 2 × the most clients), so no Predict client is
refused, and sizes its gRPC handler threads itself: the call budgets' sum plus `--worker-threads` spare
ones (the default, 8); the count is recorded in the results and in the BENCHMARKS.md section.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "proto")]  # this checkout, whatever the venv has installed

from benchmarks.common import (  # noqa: E402
    entry_point, machine, markdown_table, median, output_flags, percentile, scrape, section_head, study_parser,
    study_results, write_markdown, write_results)

SECTION = "serving_latency"
LEARNERS = ("thread", "process")
INPUT_SHAPE = (1, 8, 8)
CLASSES = [str(i) for i in range(10)]


# -- child processes (keep their imports light: no torch in the predict clients) ------------------

def predict_client(target: str, n: int, seconds: float, ready, go, results, index: int) -> None:
    import numpy as np

    from client.api import Client, ServiceError

    rng = np.random.default_rng(index)
    x = rng.random((n, *INPUT_SHAPE), dtype=np.float32)
    latencies, errors = [], {}
    with Client(target, timeout=10) as c:
        c.predict(x, retry=None)  # channel up, first-call costs paid
        ready.put(index)
        go.wait()
        end = time.perf_counter() + seconds
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                break
            try:
                c.predict(x, retry=None)
                latencies.append(time.perf_counter() - t0)
            except ServiceError as e:
                errors[e.code.name] = errors.get(e.code.name, 0) + 1
    results.put({"index": index, "latencies": latencies, "errors": errors})


def trainer(target: str, batch_size: int, ready, go, stop, results, start_sequence) -> None:
    import threading

    import torch

    torch.set_num_threads(1)
    from cl_engine import build_stream
    from cl_engine.streams import StreamOptions
    from client.api import Batch, Client, Schema

    stream = build_stream("digits-rotated", StreamOptions(seed=0))
    train = stream.buckets[0].train
    n = len(train)
    schema = Schema(tuple(CLASSES), INPUT_SHAPE)
    window = threading.Semaphore(16)
    sent = {"samples": 0}

    def batches():
        seq = start_sequence.value
        g = torch.Generator().manual_seed(0)
        while not stop.is_set():
            for index in torch.randperm(n, generator=g).split(batch_size):
                while not window.acquire(timeout=0.1):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                seq += 1
                x, y = train.batch(index, train=True)
                sent["samples"] += len(y)
                yield Batch("serving-bench", seq, 0, x, y)
        start_sequence.value = seq

    with Client(target, timeout=30) as c:
        ready.put("trainer")
        go.wait()
        t0 = time.perf_counter()
        acked = 0
        last_sequence = start_sequence.value
        for ack in c.train(batches(), schema=schema):
            window.release()
            acked += 1
            last_sequence = ack.sequence
        seconds = time.perf_counter() - t0
        start_sequence.value = last_sequence
    results.put({"trainer": True, "batches": acked, "samples": sent["samples"], "seconds": seconds})


# -- the study ------------------------------------------------------------------------------------

def server_delta(before: dict, after: dict) -> dict:
    s = after.get("clstream_predict_seconds_sum", 0) - before.get("clstream_predict_seconds_sum", 0)
    c = after.get("clstream_predict_seconds_count", 0) - before.get("clstream_predict_seconds_count", 0)
    st = after.get("clstream_train_step_seconds_sum", 0) - before.get("clstream_train_step_seconds_sum", 0)
    sc = after.get("clstream_train_step_seconds_count", 0) - before.get("clstream_train_step_seconds_count", 0)
    return {"server_predict_mean_seconds": s / c if c else float("nan"), "server_predict_calls": c,
            "server_train_step_mean_seconds": st / sc if sc else float("nan"), "server_train_steps": sc}


def phase(ctx, server, args, clients: int, training: bool, start_sequence) -> dict:
    ready, results = ctx.Queue(), ctx.Queue()
    go, train_go, stop = ctx.Event(), ctx.Event(), ctx.Event()
    procs = [ctx.Process(target=predict_client, args=(server.target, args.predict_samples, args.seconds, ready, go,
                                                      results, i), daemon=True) for i in range(clients)]
    if training:
        procs.append(ctx.Process(target=trainer, args=(server.target, args.batch_size, ready, train_go, stop, results,
                                                       start_sequence), daemon=True))
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=300)
    before = scrape(server.metrics_url)
    load = os.getloadavg()[0]
    if training:
        train_go.set()
        time.sleep(0.5)
    go.set()
    out = [results.get(timeout=args.seconds + 120) for _ in range(clients)]
    stop.set()
    train = results.get(timeout=120) if training else None
    for p in procs:
        p.join(timeout=60)
    after = scrape(server.metrics_url)
    latencies = [v for r in out for v in r["latencies"]]
    errors: dict = {}
    for r in out:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return {"clients": clients, "phase": "training" if training else "idle", "loadavg_1min_before": load,
            "latencies": latencies, "calls": len(latencies), "errors": errors,
            "throughput_per_second": len(latencies) / args.seconds,
            "trainer": train, "train_samples_per_second": (train["samples"] / train["seconds"]) if train else None,
            **server_delta(before, after)}


def summarise(runs: list[dict], levels) -> list[dict]:
    rows = []
    for learner in LEARNERS:
        for c in levels:
            rows.append(summarise_level(runs, learner, c))
    return rows


def summarise_level(runs: list[dict], learner: str, clients: int) -> dict:
    runs = [r for r in runs if r["learner"] == learner and r["clients"] == clients]
    row = {"learner": learner, "clients": clients}
    for ph in ("idle", "training"):
        rs = [r for r in runs if r["phase"] == ph]
        lat = [v for r in rs for v in r["latencies"]]
        row[f"p50_{ph}"] = percentile(lat, 50)
        row[f"p99_{ph}"] = percentile(lat, 99)
        row[f"calls_{ph}"] = len(lat)
        row[f"throughput_{ph}"] = median([r["throughput_per_second"] for r in rs])
        row[f"server_mean_{ph}"] = median([r["server_predict_mean_seconds"] for r in rs])
        row[f"errors_{ph}"] = sum(sum(r["errors"].values()) for r in rs)
        row[f"p99_{ph}_per_rep"] = [percentile(r["latencies"], 99) for r in rs]
    row["train_samples_per_second"] = median([r["train_samples_per_second"] for r in runs if r["phase"] == "training"])
    row["p99_ratio"] = row["p99_training"] / row["p99_idle"]
    row["p50_ratio"] = row["p50_training"] / row["p50_idle"]
    row["goal_met"] = row["p99_ratio"] <= 2.0
    return row


def table(rows: list[dict]) -> str:
    ms = lambda v: f"{1e3 * v:.2f}"  # noqa: E731
    return markdown_table(
        ["learner", "clients", "p50 idle / training (ms)", "p99 idle / training (ms)", "p99 training ÷ idle", "≤ 2×",
         "Predict/s idle / training", "server handler mean idle / training (ms)", "training samples/s meanwhile",
         "errors"],
        [[r["learner"], r["clients"], f"{ms(r['p50_idle'])} / {ms(r['p50_training'])}",
          f"{ms(r['p99_idle'])} / {ms(r['p99_training'])}", f"**{r['p99_ratio']:.2f}**", "yes" if r["goal_met"] else "no",
          f"{r['throughput_idle']:.0f} / {r['throughput_training']:.0f}",
          f"{ms(r['server_mean_idle'])} / {ms(r['server_mean_training'])}", f"{r['train_samples_per_second']:.0f}",
          r["errors_idle"] + r["errors_training"]] for r in rows])


def publish(out: dict, path: Path, markdown: Path) -> None:
    """Summarise, write the JSON (without the raw latencies) and the BENCHMARKS.md section. A results
    file written earlier has no raw latencies left: its stored summary is rendered as it is."""
    st = out["settings"]
    raw = all(r.get("latencies") is not None for r in out["runs"])
    rows = summarise(out["runs"], st["clients"]) if raw else out["summary"]
    out["summary"] = rows
    md = table(rows)
    print(md)
    if raw:
        out = {**out, "runs": [{**r, "latencies": None, "latency_count": len(r["latencies"])} for r in out["runs"]]}
    write_results(out, path)
    if str(markdown) == "-":
        return
    loads = [r["loadavg_1min_before"] for r in out["runs"]]
    if "server_handler_threads" in st:
        threads = (f"{st['server_handler_threads']} gRPC handler threads (the call budgets' sum, "
                   f"{st['server_max_concurrent_predictions']} of them Predict places, plus "
                   f"{st['server_spare_threads']} spare)")
    else:  # a results file from before the call budgets, when --worker-threads counted every handler thread
        threads = f"{st['server_worker_threads']} gRPC handler threads"
    body = "\n".join(section_head(
        "### Serving while learning: Predict latency idle vs during training (`benchmarks/serving_latency.py`)", out,
        loads, f"; server: one torch thread, {threads}") + [
        f"Each client is a process with one call in flight; {st['predict_samples']} sample(s) per Predict; "
        f"{st['seconds']:g} s per phase, {st['reps']} repetition(s) per level, latencies pooled over repetitions. "
        f"Training: one stream of batch {st['batch_size']} (digits, MLP, replay), 16 batches in flight. Learner "
        "`thread`: the training worker is a thread of the server (the default); `process`: `--learner-process`.", "",
        md,
    ])
    write_markdown(markdown, body, SECTION)


def main(argv=None) -> int:
    p = study_parser(__doc__)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16], help="concurrency levels (processes)")
    p.add_argument("--seconds", type=float, default=4.0, help="length of each phase")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--predict-samples", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=10, help="training batch")
    p.add_argument("--quick", action="store_true", help="smoke test: 1.5 s phases, 1 repetition")
    output_flags(p, SECTION)
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.reps = 1.5, 1
    from client.api import Batch, Client, Schema
    from client.local_server import LocalServer

    t_start = time.perf_counter()
    info = machine()
    # Every client holds one Predict call: the serving budget takes them all, with room for GetStatus. The
    # server sizes its handler threads from the budgets (their sum plus --worker-threads spare ones), so the
    # training stream and every admitted call have a thread; the defaults of the rest are recorded.
    from server.settings import settings_from

    settings = settings_from(None, max_concurrent_predictions=max(32, max(args.clients) * 2))
    args.server_max_concurrent_predictions = settings.max_concurrent_predictions
    args.server_spare_threads = settings.worker_threads
    args.server_handler_threads = (settings.max_open_streams + settings.max_concurrent_predictions
                                   + settings.max_admin_calls + settings.worker_threads)
    server_args = ["--model", "mlp", "--strategy", "replay", "--device", "cpu", "--input-shape",
                   *map(str, INPUT_SHAPE), "--class-names", *CLASSES,
                   "--max-concurrent-predictions", str(settings.max_concurrent_predictions),
                   "--checkpoint-every-batches", "0", "--log-level", "warning"]
    ctx = mp.get_context("spawn")
    start_sequence = ctx.Value("q", 0)
    runs = []
    import numpy as np

    k = 0
    for rep in range(args.reps):
        for learner in (LEARNERS if rep % 2 == 0 else LEARNERS[::-1]):
            flags = ["--learner-process"] if learner == "process" else []
            with LocalServer(server_args + flags) as server:
                rng = np.random.default_rng(0)
                with Client(server.target) as c:  # a few batches, so the model and a snapshot exist
                    warm = [Batch("warm-up", i + 1, 0, rng.random((10, *INPUT_SHAPE), dtype=np.float32),
                                  rng.integers(0, 10, 10)) for i in range(20)]
                    list(c.train(warm, schema=Schema(tuple(CLASSES), INPUT_SHAPE)))
                start_sequence.value = 0  # a new server: the trainer's stream starts again
                for clients in args.clients:
                    order = (False, True) if k % 2 == 0 else (True, False)
                    k += 1
                    for training in order:
                        r = phase(ctx, server, args, clients, training, start_sequence)
                        runs.append({"rep": rep, "learner": learner, **r})
                        print(f"rep {rep + 1}/{args.reps} {learner:7s} clients {clients:2d} {r['phase']:8s}: p50 "
                              f"{1e3 * percentile(r['latencies'], 50):.2f} ms "
                              f"p99 {1e3 * percentile(r['latencies'], 99):.2f} ms {r['throughput_per_second']:.0f}/s "
                              f"errors {r['errors']} load {r['loadavg_1min_before']:.1f}"
                              + (f" train {r['train_samples_per_second']:.0f} samples/s" if training else ""),
                              file=sys.stderr)
    out = study_results("serving while learning: Predict latency idle vs during training", argv, info, args, t_start,
                        client_kind="processes (multiprocessing spawn), one call in flight each", runs=runs)
    publish(out, args.out, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(entry_point(main, publish, "serving_latency"))
