"""`clstream-client`: talk to a clstream server from a shell.

    clstream-client stream  --target HOST:PORT --dataset digits-rotated --report out/run
    clstream-client predict --target HOST:PORT --dataset digits-rotated --bucket 4 --count 8 --top-k 3
    clstream-client status  --target HOST:PORT
    clstream-client forget-stream --target HOST:PORT STREAM_ID
    clstream-client demo    [--strategy gem] [--dataset buckets-npz:my.npz]
    clstream-client figures out/run/report.json
    clstream-client publish --redis redis://HOST:6379 --stream KEY --dataset digits-rotated
    clstream-client consume --redis redis://HOST:6379 --stream KEY --group NAME --target HOST:PORT

The connection flags (--target, --token, --tls, ...) also read CLSTREAM_TARGET and CLSTREAM_TOKEN, and --redis
reads CLSTREAM_REDIS.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
from functools import partial
from pathlib import Path

from pydantic import ValidationError

from cl_engine.__main__ import add_stream_flags, stream_options
from cl_engine.config import validation_message
from cl_engine.report import format_table, jsonable

from .api import LB_POLICIES, Client, RetryPolicy, ServiceError

EXIT_USAGE, EXIT_SERVICE = 2, 1


# -- shared flags ----------------------------------------------------------------------------------

def add_connection_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    g.add_argument("--target", default=os.environ.get("CLSTREAM_TARGET", "127.0.0.1:50051"),
                   help="server address HOST:PORT, or anything gRPC name resolution takes, e.g. several replicas as "
                        "ipv4:127.0.0.1:5001,127.0.0.1:5002 (default $CLSTREAM_TARGET or 127.0.0.1:50051)")
    g.add_argument("--lb", choices=LB_POLICIES, default=None,
                   help="gRPC load balancing: round_robin spreads calls over every address of --target; default "
                        "round_robin for a target listing several addresses, else pick_first")
    g.add_argument("--token", default=os.environ.get("CLSTREAM_TOKEN"),
                   help="bearer token (default $CLSTREAM_TOKEN); prefer --token-file or the variable to the flag")
    g.add_argument("--token-file", type=Path, default=None, help="file whose first line is the bearer token")
    g.add_argument("--tls", action="store_true", help="connect with TLS (the system's CA roots unless --ca-file)")
    g.add_argument("--ca-file", type=Path, default=None, help="PEM CA bundle to verify the server (implies --tls)")
    g.add_argument("--cert-file", type=Path, default=None, help="PEM client certificate, for mutual TLS")
    g.add_argument("--key-file", type=Path, default=None, help="PEM private key of --cert-file")
    g.add_argument("--server-name", default=None, help="expected name in the server's certificate, if not the host")
    g.add_argument("--timeout", type=float, default=30.0, help="deadline of each unary call, seconds")
    g.add_argument("--retries", type=int, default=6,
                   help="tries of a safe call while the server is UNAVAILABLE, with exponential back-off")


def add_redis_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("broker")
    g.add_argument("--redis", default=os.environ.get("CLSTREAM_REDIS", "redis://127.0.0.1:6379/0"),
                   help="Redis URL redis://[:PASSWORD@]HOST:PORT[/DB], rediss:// for TLS (default $CLSTREAM_REDIS or "
                        "redis://127.0.0.1:6379/0)")
    g.add_argument("--stream", required=True, metavar="KEY", help="the Redis stream's key")


def connect(args: argparse.Namespace) -> Client:
    token = args.token
    if args.token_file is not None:
        token = (args.token_file.read_text().splitlines() or [""])[0].strip()
        if not token:  # else no token would be sent, and the server's refusal would not say why
            raise ValueError(f"--token-file {args.token_file}: its first line is empty; expected the bearer token")
    read = lambda p: p.read_bytes() if p is not None else None  # noqa: E731
    return Client(args.target, token=token, tls=args.tls, root_certificates=read(args.ca_file),
                  certificate_chain=read(args.cert_file), private_key=read(args.key_file),
                  server_name=args.server_name, timeout=args.timeout, retry=RetryPolicy(attempts=max(1, args.retries)),
                  lb=args.lb)


def add_replay_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("replay")
    g.add_argument("--batch-size", type=int, default=10, help="samples per training batch")
    g.add_argument("--epochs", type=int, default=1, help="passes over each bucket")
    g.add_argument("--within-bucket", choices=["shuffled", "upload-time"], default="shuffled",
                   help="order inside a bucket: shuffled (seeded, every pass), or upload-time (the first pass in "
                        "upload order, a live stream's; needs dated samples)")
    g.add_argument("--rate", type=float, default=None, help="samples per second at most (default: unlimited)")
    g.add_argument("--max-in-flight", type=int, default=16,
                   help="batches sent and not yet acknowledged, at most (0: no client-side bound)")
    g.add_argument("--query-every", type=int, default=10,
                   help="ask for predictions on upcoming, untrained data every N batches (0: never)")
    g.add_argument("--query-size", type=int, default=32, help="samples per prediction query")
    g.add_argument("--stream-id", default=None,
                   help="the stream's name on the server (default: derived from dataset and schedule, so running "
                        "the same command again resumes where the server stands)")
    g.add_argument("--reconnect-timeout", type=float, default=120.0,
                   help="how long to wait for a server that went away before giving up, seconds (a server that "
                        "cannot be reached at the start fails the command at once)")
    g.add_argument("--durable-retries", type=int, default=4,
                   help="how many more times to ask for a bucket's end while the server cannot write its checkpoint "
                        "(1, 2, 4, ... s apart) before failing")
    g.add_argument("--report", default=None, metavar="DIR", help="write report.json and the PNG figures here")
    g.add_argument("--no-figures", action="store_true", help="with --report: the JSON only")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def replay_options(args: argparse.Namespace, seed: int | None):
    from .replay import ReplayOptions

    if args.batch_size < 1 or args.epochs < 1 or args.query_size < 1 or args.query_every < 0 or args.max_in_flight < 0:
        raise ValueError("--batch-size, --epochs and --query-size must be >= 1; --query-every and --max-in-flight "
                         ">= 0")
    if args.rate is not None and args.rate <= 0:
        raise ValueError(f"--rate must be > 0 samples per second, got {args.rate}")
    return ReplayOptions(batch_size=args.batch_size, epochs=args.epochs, within_bucket=args.within_bucket, seed=seed,
                         rate=args.rate,
                         max_in_flight=args.max_in_flight,
                         query_every=args.query_every, query_size=args.query_size, stream_id=args.stream_id,
                         reconnect_timeout=args.reconnect_timeout, durable_retries=max(0, args.durable_retries),
                         progress=not args.quiet)


def print_results(report: dict, directory: str | None, figures: bool = True) -> None:
    from .report import summary_lines, write_report

    report = jsonable(report)
    print(format_table(report))
    for line in summary_lines(report):
        print(line)
    if directory:
        paths = write_report(directory, report, figures=figures)
        print(f"report written to {paths[0]}" + (f" with {len(paths) - 1} figures" if len(paths) > 1 else ""))


# -- commands ----------------------------------------------------------------------------------------

def cmd_stream(args: argparse.Namespace) -> int:
    from cl_engine import build_stream

    from .replay import Replay
    from .report import build_report

    import torch

    from cl_engine.schedule import check_within
    from cl_engine.streams import stored_files

    options = replay_options(args, args.seed)
    options.send_files = args.send_files
    stream = build_stream(args.dataset, stream_options(args), args.order)
    check_within(options.within_bucket, stream.name, stream.undated_samples)  # a CLI mistake, before any contact
    if args.send_files and stored_files(stream.buckets[0].train, torch.zeros(1, dtype=torch.long)) is None:
        raise ValueError(f"--send-files: {args.dataset} is not an image stream; only image files (CLEAR in images "
                         "mode) can be sent as files")
    with connect(args) as client:
        if not args.quiet:
            print(f"streaming {stream.name}: {len(stream)} buckets, {sum(len(b.train) for b in stream.buckets)} "
                  f"training samples × {args.epochs} epoch(s) to {args.target}", file=sys.stderr)
        result = Replay(client, stream, options).run()
    report = build_report(result, config={"dataset": args.dataset, "order": args.order, "target": args.target})
    print_results(report, args.report, figures=not args.no_figures)
    return 0


def _load_npy(path: Path):
    """The array of a .npy file, or a ValueError that names the file and what was expected."""
    import numpy as np

    expected = "expected a .npy array [n, *input_shape] (numpy.save)"
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise ValueError(f"--npy {path} is not a .npy file; {expected}")
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"--npy {path} could not be read ({e}); {expected}") from None
    if x.ndim < 2:
        raise ValueError(f"--npy {path} holds an array of shape {x.shape}; {expected}")
    return x


def _predict_inputs(args: argparse.Namespace):
    """(x or None, images or None, labels or None, names) for the predict command."""
    if args.image:
        return None, [Path(p).read_bytes() for p in args.image], None, [str(p) for p in args.image]
    if args.npy:
        x = _load_npy(Path(args.npy))
        if args.offset >= len(x):
            raise ValueError(f"--offset {args.offset} is past the {len(x)} samples of {args.npy}")
        x = x[args.offset: args.offset + args.count] if args.count else x[args.offset:]
        return x, None, None, [f"{args.npy}[{args.offset + i}]" for i in range(len(x))]
    import torch

    from cl_engine import build_stream

    stream = build_stream(args.dataset, stream_options(args), args.order)
    if not 0 <= args.bucket < len(stream):
        raise ValueError(f"--bucket must be in 0..{len(stream) - 1}, got {args.bucket}")
    samples = getattr(stream.buckets[args.bucket], args.split)
    if args.offset >= len(samples):
        raise ValueError(f"--offset {args.offset} is past the {len(samples)} samples of bucket {args.bucket}'s "
                         f"{args.split} split")
    # Spread over the rest of the split: a split sorted by label (digits' test sets) then shows every class.
    count = min(args.count or 8, len(samples) - args.offset)
    index = torch.linspace(args.offset, len(samples) - 1, count).round().long() if count > 1 else \
        torch.tensor([args.offset])
    x, y = samples.batch(index)
    return x, None, y.tolist(), [f"bucket {args.bucket} {args.split}[{i}]" for i in index.tolist()]


def cmd_predict(args: argparse.Namespace) -> int:
    x, images, labels, names = _predict_inputs(args)
    with connect(args) as client:
        answer = client.predict(x, images=images, top_k=args.top_k) if x is not None else \
            client.predict(images=images, top_k=args.top_k)
    correct = None if labels is None else sum(int(p.label == t) for p, t in zip(answer.predictions, labels))
    if args.json:
        print(json.dumps({"model_version": answer.model_version, "latency_seconds": answer.latency_seconds,
                          "predictions": [{"sample": n, "label": p.label, "class_name": p.class_name,
                                           "top_labels": p.top_labels, "top_probabilities": p.top_probabilities,
                                           **({"true_label": labels[i]} if labels is not None else {})}
                                          for i, (n, p) in enumerate(zip(names, answer.predictions))],
                          **({"accuracy": correct / len(labels)} if labels else {})}, indent=2))
        return 0
    width = max(len(n) for n in names)
    for i, (n, p) in enumerate(zip(names, answer.predictions)):
        truth = "" if labels is None else f"  true {labels[i]}{' ✓' if p.label == labels[i] else ' ✗'}"
        top = ", ".join(f"{l}:{q:.3f}" for l, q in zip(p.top_labels, p.top_probabilities))
        print(f"{n:<{width}}  → {p.class_name:<10} [{top}]{truth}")
    tail = f"; accuracy {correct}/{len(labels)}" if labels else ""
    print(f"model version {answer.model_version}, {1000 * answer.latency_seconds:.1f} ms{tail}")
    return 0


def _pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}%"


def cmd_status(args: argparse.Namespace) -> int:
    with connect(args) as client:
        status = client.status()
        health = client.health()
    s = jsonable(status.as_dict())
    if args.json:
        print(json.dumps({**s, "health": health}, indent=2))
        return 0
    c, b, d = s["config"], s["buffer"], s["drift"]
    schema = s["schema"]
    print(f"{args.target}: {health}; model version {s['model_version']} (serving {s['serving_version']}), "
          f"open bucket {s['open_bucket']}, {s['samples_trained']} samples in {s['batches_trained']} batches")
    if s["has_model"]:
        names = schema["class_names"]
        print(f"schema: {len(names)} classes ({', '.join(names[:10])}{', …' if len(names) > 10 else ''}), "
              f"input {schema['input_shape']}")
    print("learner: " + ", ".join(f"{k} {c[k]}" for k in ("strategy", "model", "lr", "retention", "buffer_capacity",
                                                          "memory_per_bucket", "seed") if k in c))
    print(f"prequential accuracy {_pct(s['prequential_accuracy'])} (window), "
          f"{_pct(s['prequential_accuracy_overall'])} (all); queue {s['queue_depth']}/{s['queue_capacity']}")
    print(f"replay memory {b['size']}/{b['capacity']} samples, {b['bytes'] / 1024:.0f} KiB; by bucket {b['by_bucket']}")
    print(f"drift: statistic {d['statistic']:.2f} / threshold {d['threshold']:.0f}, {d['events']} event(s)"
          + (f"; GEM projections {s['gem_projections']}, QP fallbacks {s['qp_fallbacks']}"
             if s["gem_projections"] or s["qp_fallbacks"] else ""))
    if s["applied_sequences"]:
        print("streams: " + ", ".join(f"{k} at {v}" for k, v in s["applied_sequences"].items()))
    if s["last_checkpoint"]:
        print(f"last checkpoint: {s['last_checkpoint']}")
    p = s["promotion"]
    if p.get("enabled"):
        print(f"guarded promotion: {p['promotions']} promoted, {p['rejections']} rejected"
              + (f" (last: {p['last_rejection']})" if p["last_rejection"] else ""))
    if s["rollback_versions"]:
        print("rollback versions: " + ", ".join(map(str, s["rollback_versions"])))
    if s["accuracy_matrix"] or s["eval_buckets"]:
        print(format_table(s))
    return 0


def cmd_forget_stream(args: argparse.Namespace) -> int:
    with connect(args) as client:
        r = client.forget_stream(args.stream_id)
    if args.json:
        print(json.dumps(r, indent=2))
    elif r["forgotten"]:
        print(f"forgot stream {r['stream_id']!r} (its applied mark was {r['sequence']}); the server keeps "
              f"{r['streams_known']} streams' marks")
    else:
        print(f"the server keeps no mark for stream {r['stream_id']!r}; nothing to forget ({r['streams_known']} "
              "streams known)")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    with connect(args) as client:
        r = client.rollback(args.to_version)
    where = f"durable in {r.checkpoint}" if r.durable else "in memory only (the server has no checkpoint directory)"
    print(f"{args.target}: learner and serving back at model version {r.model_version}, open bucket "
          f"{r.open_bucket}; {where}. Batches applied after it are forgotten; their sequences stay applied")
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    from .figures import draw_all

    path = Path(args.report_json)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; expected the report.json of clstream-client stream or demo "
                         f"(e.g. {path / 'report.json'})")
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not JSON ({e}); expected the report.json of clstream-client stream or demo") \
            from None
    for drawn in draw_all(report, args.out or path.parent, source=str(path)):
        print(drawn)
    return 0


def broker_command(run):
    """A broker command whose Redis failures (or a lost lease) are one line and exit 1, not a traceback."""
    def command(args: argparse.Namespace) -> int:
        from redis import RedisError

        from .broker import LeaseLost
        try:
            return run(args)
        except RedisError as e:
            print(f"error: Redis at {args.redis}: {e}", file=sys.stderr)
        except LeaseLost as e:
            print(f"error: {e}", file=sys.stderr)
        return EXIT_SERVICE
    return command


@broker_command
def cmd_publish(args: argparse.Namespace) -> int:
    from cl_engine import build_stream

    from .broker import PublishOptions, connect_redis, publish

    import torch

    from cl_engine.schedule import check_within
    from cl_engine.streams import stored_files

    stream = build_stream(args.dataset, stream_options(args), args.order)
    check_within(args.within_bucket, stream.name, stream.undated_samples)  # a CLI mistake, before any contact
    options = PublishOptions(batch_size=args.batch_size, epochs=args.epochs, within_bucket=args.within_bucket,
                             seed=args.seed, rate=args.rate, replace=args.replace, progress=not args.quiet)
    with connect_redis(args.redis) as r:
        summary = publish(r, args.stream, stream, options, dataset=args.dataset)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"published {stream.name} to {args.stream}: {summary['entries']} entries ({summary['batches']} batches, "
              f"{summary['samples']} samples, {summary['buckets']} bucket ends, an end marker); stream_id "
              f"{summary['stream_id']}")
    return 0


@broker_command
def cmd_consume(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .broker import ConsumeOptions, Consumer, connect_redis

    options = ConsumeOptions(consumer=args.consumer or "", lease=args.lease, max_in_flight=args.max_in_flight,
                             rate=args.rate, follow=args.follow, reconnect_timeout=args.reconnect_timeout,
                             durable_retries=max(0, args.durable_retries), progress=not args.quiet)
    with connect_redis(args.redis) as r, connect(args) as client:
        result = Consumer(client, r, args.stream, args.group, options).run()
    summary = jsonable({k: v for k, v in asdict(result).items() if k != "final_status"})
    status = jsonable(result.final_status.as_dict())
    if args.json:
        print(json.dumps({**summary, "accuracy_matrix": status["accuracy_matrix"],
                          "samples_trained": status["samples_trained"], "metrics": status["metrics"]}, indent=2))
        return 0
    print(format_table(status))
    print(f"consumed {args.stream} as {result.consumer} in group {args.group}: {result.entries} entries "
          f"({result.redelivered} redelivered), {result.batches_applied} batches trained, {result.duplicates} "
          f"duplicates, {result.acked} acknowledged; durable: {result.durable}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


# -- the parser --------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from cl_engine.__main__ import DefaultsFormatter, add_learner_flags

    parser = argparse.ArgumentParser(prog="clstream-client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True,  # every command's --help shows the defaults
                                parser_class=partial(argparse.ArgumentParser, formatter_class=DefaultsFormatter))

    stream = sub.add_parser("stream", help="play a dataset to a server bucket by bucket, as live traffic")
    add_connection_flags(stream)
    add_stream_flags(stream)
    add_replay_flags(stream)
    stream.add_argument("--seed", type=int, default=None,
                        help="order of the passes after the first (default: the server's learner seed, so the "
                             "batches equal `python -m cl_engine run --seed` with the same seed)")
    stream.add_argument("--send-files", action="store_true",
                        help="image streams (CLEAR): send each training image's file as it is on disk, no "
                             "re-encode, for the server to decode (start it with --image-transform imagenet); "
                             "default: the decoded uint8 pixels")
    stream.set_defaults(func=cmd_stream)

    predict = sub.add_parser("predict", help="labels for a few samples, from the serving model")
    add_connection_flags(predict)
    add_stream_flags(predict)
    source = predict.add_argument_group("samples (default: --dataset's held-out samples)")
    source.add_argument("--bucket", type=int, default=0, help="bucket to take samples from")
    source.add_argument("--split", choices=["test", "train"], default="test")
    source.add_argument("--offset", type=int, default=0, help="first sample")
    source.add_argument("--count", type=int, default=None,
                        help="samples, spread evenly from --offset to the end of the split (default 8; --npy: "
                             "all, in order)")
    source.add_argument("--npy", default=None, help="a .npy array [n, *input_shape] instead of a dataset")
    source.add_argument("--image", action="append", default=None, help="a JPEG or PNG file (repeatable)")
    predict.add_argument("--top-k", type=int, default=3, help="most likely labels shown per sample")
    predict.add_argument("--json", action="store_true", help="the answer as JSON")
    predict.set_defaults(func=cmd_predict)

    status = sub.add_parser("status", help="the server's accuracy matrix, metrics, memory, drift and streams")
    add_connection_flags(status)
    status.add_argument("--json", action="store_true", help="the status as JSON")
    status.set_defaults(func=cmd_status)

    forget = sub.add_parser("forget-stream", help="admin: drop one stream id's applied mark, freeing its place in "
                                                  "the server's max_streams (exactly-once no longer covers that id)")
    add_connection_flags(forget)
    forget.add_argument("stream_id", help="the stream id, as in `clstream-client status`")
    forget.add_argument("--json", action="store_true", help="the answer as JSON")
    forget.set_defaults(func=cmd_forget_stream)
    rollback = sub.add_parser("rollback", help="put the learner and serving back to a kept model version "
                                               "(`status --json`: rollback_versions)")
    add_connection_flags(rollback)
    rollback.add_argument("--to-version", type=int, default=None, help="the model version to return to (required)")
    rollback.set_defaults(func=cmd_rollback)

    demo = sub.add_parser("demo", help="the main job: start a server, stream a dataset to it, report",
                          description="Start clstream-server on a free loopback port, stream the dataset to it "
                                      "with predictions in between, print the accuracy matrix and the metrics, "
                                      "write the report and stop the server.")
    add_stream_flags(demo)
    add_learner_flags(demo)
    add_replay_flags(demo)
    demo.set_defaults(report="out/demo")
    server = demo.add_argument_group("server")
    server.add_argument("--threads", type=int, default=1, help="the server's torch threads (small models: 1)")
    server.add_argument("--port", type=int, default=0, help="gRPC port (0: a free one)")
    server.add_argument("--metrics-port", type=int, default=0, help="Prometheus port (0: a free one)")
    server.add_argument("--server-arg", action="append", default=[], metavar="FLAG[=VALUE]",
                        help="another clstream-server flag, e.g. --server-arg=--checkpoint-dir=ckpt (repeatable)")
    demo.set_defaults(func=cmd_demo)

    publish = sub.add_parser("publish", help="write a dataset into a Redis stream, in time order, as a producer",
                             description="Write the dataset into the Redis stream KEY as a producer would: one entry "
                                         "per training batch, bucket-end markers and an end-of-stream marker; the "
                                         "held-out sets and the schema go into KEY:heldout:B and KEY:meta. See "
                                         "docs/broker.md.")
    add_redis_flags(publish)
    add_stream_flags(publish)
    g = publish.add_argument_group("schedule (as `stream`)")
    g.add_argument("--batch-size", type=int, default=10, help="samples per entry (one training batch)")
    g.add_argument("--epochs", type=int, default=1, help="passes over each bucket")
    g.add_argument("--within-bucket", choices=["shuffled", "upload-time"], default="shuffled",
                   help="order inside a bucket, as `stream`'s: shuffled (seeded, every pass), or upload-time (the "
                        "first pass in upload order; needs dated samples)")
    g.add_argument("--seed", type=int, default=0,
                   help="order of the batches in every pass (give the learner's seed to send what `stream` sends: it takes the server's)")
    g.add_argument("--rate", type=float, default=None, help="samples per second at most (default: unlimited)")
    publish.add_argument("--replace", action="store_true", help="delete an existing stream of that name first")
    publish.add_argument("--json", action="store_true", help="the summary as JSON")
    publish.add_argument("--quiet", action="store_true", help="no progress bar")
    publish.set_defaults(func=cmd_publish)

    consume = sub.add_parser("consume", help="feed the server from a Redis stream's consumer group, exactly once",
                             description="Read the Redis stream KEY in consumer group NAME and feed the server's "
                                         "Train stream and EndBucket; an entry is acknowledged (XACK) only once the "
                                         "server has made it durable. One consumer of a group is active, others "
                                         "wait as standbys. Exits 0 at the end-of-stream marker. See docs/broker.md.")
    add_connection_flags(consume)
    add_redis_flags(consume)
    consume.add_argument("--group", required=True, help="the consumer group (created at the stream's start if new)")
    consume.add_argument("--consumer", default=None, help="this consumer's name in the group (default HOST-PID)")
    consume.add_argument("--lease", type=float, default=10.0,
                         help="seconds without renewal after which a standby takes over from the active consumer")
    consume.add_argument("--max-in-flight", type=int, default=16,
                         help="batches sent and not yet acknowledged, at most (0: no client-side bound)")
    consume.add_argument("--rate", type=float, default=None, help="samples per second at most (default: unlimited)")
    consume.add_argument("--follow", action="store_true", help="keep reading after the end-of-stream marker")
    consume.add_argument("--reconnect-timeout", type=float, default=120.0,
                         help="how long to wait for a server that went away before giving up, seconds")
    consume.add_argument("--durable-retries", type=int, default=4,
                         help="how many more times to ask for a bucket's end while the server cannot write its "
                              "checkpoint (1, 2, 4, ... s apart)")
    consume.add_argument("--json", action="store_true", help="the summary as JSON")
    consume.add_argument("--quiet", action="store_true", help="no progress bar")
    consume.set_defaults(func=cmd_consume)

    figures = sub.add_parser("figures", help="draw the figures of a recorded report.json again")
    figures.add_argument("report_json")
    figures.add_argument("--out", default=None, help="folder (default: the report's)")
    figures.set_defaults(func=cmd_figures)
    return parser


def check_flags(args: argparse.Namespace) -> None:
    """Ordinary mistakes, refused before anything starts or is written (ValueError naming the flag and what it
    expects)."""
    for flag in ("count", "top_k", "threads", "to_version"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if args.command == "rollback" and args.to_version is None:
        raise ValueError("--to-version is required: one of the server's rollback_versions (`status --json`)")
    if getattr(args, "offset", 0) < 0:
        raise ValueError(f"--offset must be 0 or more, got {args.offset}")
    if args.command in ("publish", "consume"):
        for flag in ("batch_size", "epochs"):
            if getattr(args, flag, 1) < 1:
                raise ValueError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
        if args.rate is not None and args.rate <= 0:
            raise ValueError(f"--rate must be > 0 samples per second, got {args.rate}")
        if getattr(args, "lease", 1) <= 0:
            raise ValueError(f"--lease must be > 0 seconds, got {args.lease}")
        if getattr(args, "max_in_flight", 0) < 0:
            raise ValueError(f"--max-in-flight must be 0 or more, got {args.max_in_flight}")
        if not args.stream:
            raise ValueError("--stream must name the Redis stream's key, got ''")
    if getattr(args, "reconnect_timeout", 1) <= 0:
        raise ValueError(f"--reconnect-timeout must be > 0 seconds, got {args.reconnect_timeout}")
    if args.command in ("stream", "demo") and args.report is not None and Path(args.report).exists() \
            and not Path(args.report).is_dir():
        raise ValueError(f"--report {args.report} is a file; expected a folder (report.json and the figures go "
                         "into it)")
    if args.command == "figures" and args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a file; expected a folder for the figures")
    if args.command == "demo":
        from cl_engine.__main__ import learner_config
        from cl_engine.learner import resolve_device

        resolve_device(learner_config(args).device)  # the server would fail to start on a device not here


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_flags(args)
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below, not at exit
        return code
    except BrokenPipeError:  # `clstream-client status --json | head`: the reader has gone, as with any Unix tool
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's own flush is quiet
        return 128 + signal.SIGPIPE
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_SERVICE

    except ValidationError as e:
        print(f"error: {validation_message(e)}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, FileNotFoundError, IsADirectoryError, PermissionError, RuntimeError, TimeoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume where the server stands", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
