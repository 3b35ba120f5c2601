"""`clstream-client demo` (`make demo`): the whole product on one machine, nothing to download.

It starts the real clstream-server as a child process on a free loopback port with the learner
the flags describe (the same flags as `python -m cl_engine run`), streams the dataset to it
(digits-rotated by default) with prediction queries in between, checkpointing into DIR/checkpoints
(emptied first: each demo starts from an untrained model), prints the accuracy matrix and the
metrics, writes report.json and the figures, and stops the server with SIGTERM (drain, exit 0).
The server's Prometheus endpoint is live during the run; its address is printed at the start.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from cl_engine import LearnerConfig


def server_flags(config: LearnerConfig) -> list[str]:
    """clstream-server flags that give its learner exactly `config` (every field, defaults included,
    so neither the server's environment nor its config file can change what the demo runs)."""
    flags: list[str] = []
    for name, value in config.model_dump().items():
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + name.replace("_", "-"))
        else:
            flags += [flag, str(value)]
    return flags


def run_demo(args: argparse.Namespace) -> int:
    from cl_engine import build_stream
    from cl_engine.__main__ import learner_config, stream_options

    from .api import Client
    from .cli import print_results, replay_options
    from .local_server import LocalServer
    from .replay import Replay
    from .report import build_report

    t0 = time.perf_counter()
    config = learner_config(args)  # invalid flags fail here, before anything starts
    options = replay_options(args, config.seed)
    directory = Path(args.report)
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / "server.log"
    log_path.unlink(missing_ok=True)
    checkpoints = directory / "checkpoints"  # the demo's own: every run starts from an empty model
    shutil.rmtree(checkpoints, ignore_errors=True)
    server = LocalServer(server_flags(config) + ["--checkpoint-dir", str(checkpoints.resolve()), *args.server_arg],
                         port=args.port, metrics_port=args.metrics_port, threads=args.threads, log_path=log_path,
                         cwd=directory)
    print(f"starting clstream-server on loopback (strategy {config.strategy}, model {config.model}; "
          f"log {log_path})", flush=True)
    server.launch()
    try:
        stream = build_stream(args.dataset, stream_options(args), args.order)  # while the server starts
        server.wait_ready()
        print(f"server listening on {server.target}; live Prometheus metrics at {server.metrics_url}", flush=True)
        print(f"streaming {stream.name}: {len(stream)} buckets, {sum(len(b.train) for b in stream.buckets)} training "
              f"samples × {options.epochs} epoch(s), batch {options.batch_size}, a prediction query every "
              f"{options.query_every} batches", flush=True)
        with Client(server.target) as client:
            client.wait_until_serving(timeout=60)
            result = Replay(client, stream, options).run()
    finally:
        code = server.stop()  # the result is in hand: free the CPU for the report
    if code != 0:
        print(f"error: the server exited with code {code}; see {log_path}", file=sys.stderr)
        return 1
    print("server stopped cleanly (SIGTERM, exit 0)")
    report = build_report(result, config={"dataset": args.dataset, "order": args.order, "target": server.target},
                          torch_threads=args.threads)
    print_results(report, str(directory), figures=not args.no_figures)
    print(f"the demo took {time.perf_counter() - t0:.1f}s")
    return 0
