"""The replay's report: the keys of `python -m cl_engine run`'s report, read from the server's
status, plus what only a client can see (served predictions, latency, throughput, resumes) and
the per-batch timeline the figures are drawn from.

Keys shared with the in-process report mean the same, with two timing differences: the clock is
the client's, so `train_seconds` is the wall time of the Train streams (transport, queueing and
any --rate pacing included) and `eval_seconds` that of the EndBucket calls (memory consolidation
and held-out evaluation, which the server does in one step).

Added keys: `served` (accuracy of predictions on not-yet-trained data, latency percentiles in
seconds), `model_versions`, `timeline` (acks, queries, bucket ends), `resumes`,
`duplicate_acks`, `retrained_batches`, `server`, `wall_seconds`, `end_bucket_seconds`,
`register_seconds`, `bucket_names`, `figures`.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from cl_engine import LearnerConfig
from cl_engine.report import jsonable, write_json

from .replay import ReplayResult

PERCENTILES = (50, 90, 95, 99)


def latency_summary(latencies: list[float]) -> dict:
    if not latencies:
        return {f"p{p}": None for p in PERCENTILES} | {"mean": None, "max": None}
    a = np.asarray(latencies, dtype=float)
    return {**{f"p{p}": float(np.percentile(a, p)) for p in PERCENTILES}, "mean": float(a.mean()),
            "max": float(a.max())}


def _columns(rows: list[dict], keys: list[str]) -> dict[str, list]:
    return {k: [row[k] for row in rows] for k in keys}


def build_report(r: ReplayResult, config: dict | None = None, torch_threads: int | None = None) -> dict:
    """The report of a finished replay; `config` adds the caller's settings (dataset, order, ...)."""
    s = r.final_status
    o = r.options
    t0 = min([a["time"] for a in r.acks.values()] + [q["time"] for q in r.queries], default=0.0)
    acks = [{"sequence": seq, **a, "seconds": a["time"] - t0} for seq, a in sorted(r.acks.items())]
    queries = [{**q, "seconds": q["time"] - t0} for q in r.queries]
    served_samples = sum(q["samples"] for q in r.queries)
    served_correct = sum(q["accuracy"] * q["samples"] for q in r.queries)
    versions = [q["model_version"] for q in r.queries]
    lags = [q["lag_batches"] for q in r.queries]
    train_seconds = r.train_seconds
    # GetStatus's configuration holds the server's own settings too; `config` keeps the learner's,
    # as the in-process report does, and `server.settings` the rest.
    learner = {k: v for k, v in s.config.items() if k in LearnerConfig.model_fields}
    return {
        "stream": r.stream.summary(),
        "strategy": s.config.get("strategy"),
        "config": {**learner, "batch_size": o.batch_size, "epochs": o.epochs, "within_bucket": o.within_bucket,
                   "schedule_seed": r.seed,
                   "rate": o.rate, "max_in_flight": o.max_in_flight, "query_every": o.query_every,
                   "query_size": o.query_size,
                   "stream_id": r.stream_id, **(config or {})},
        "accuracy_matrix": s.accuracy_matrix,
        "initial_accuracy": s.initial_accuracy,
        "metrics": s.metrics,
        "forgetting_per_bucket": s.forgetting_per_bucket,
        "samples_trained": s.samples_trained,
        "batches_trained": s.batches_trained,
        "train_seconds": train_seconds,
        "eval_seconds": r.end_bucket_seconds,
        "samples_per_second": r.samples_applied / train_seconds if train_seconds else None,
        "prequential_accuracy": s.prequential_accuracy_overall,
        "gem_projections": s.gem_projections,
        "qp_fallbacks": s.qp_fallbacks,
        "skipped_steps": s.skipped_steps,
        "buffer": {**s.buffer, "cut_warning": r.cut_warning},
        "torch": torch.__version__,
        "torch_threads": torch_threads,
        # What the client saw.
        "served": {
            "queries": len(r.queries),
            "failed_queries": len(r.query_failures),
            "samples": served_samples,
            "accuracy": served_correct / served_samples if served_samples else math.nan,
            "latency_seconds": latency_summary([q["latency_seconds"] for q in r.queries]),
            "mean_lag_batches": float(np.mean(lags)) if lags else None,
            "max_lag_batches": max(lags) if lags else None,
        },
        "model_versions": {
            "final": s.model_version,
            "serving": s.serving_version,
            "served_first": versions[0] if versions else None,
            "served_last": versions[-1] if versions else None,
            "served_distinct": len(set(versions)),
        },
        "timeline": {
            "acks": _columns(acks, ["sequence", "bucket", "samples", "samples_trained", "accuracy", "loss",
                                    "model_version", "seconds"]),
            "queries": _columns(queries, ["sequence", "bucket", "position", "samples", "accuracy", "model_version",
                                          "lag_batches", "latency_seconds", "seconds"]),
            "bucket_ends": r.bucket_ends,
        },
        "durable": r.durable,
        "final_checkpoint": r.final_checkpoint,
        "resumes": r.resumes,
        "duplicate_acks": r.duplicates,
        "retrained_batches": r.retrained,
        "skipped_buckets": r.skipped_buckets,
        "server": {"target": r.target, "settings": s.config, "drift": s.drift, "last_checkpoint": s.last_checkpoint,
                   "eval_buckets": s.eval_buckets, "applied_sequences": s.applied_sequences},
        "wall_seconds": r.wall_seconds,
        "end_bucket_seconds": r.end_bucket_seconds,
        "register_seconds": r.register_seconds,
        "bucket_names": [b.name or str(i) for i, b in enumerate(r.stream.buckets)],
    }


def write_report(directory: str | Path, report: dict, figures: bool = True) -> list[Path]:
    """report.json and, unless told otherwise, the PNG figures; returns the paths written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    report = jsonable(report)
    written: list[Path] = []
    if figures:
        from .figures import draw_all

        written = draw_all(report, directory)
        report["figures"] = [p.name for p in written]
    return [write_json(directory / "report.json", report), *written]


def summary_lines(report: dict) -> list[str]:
    """What a person reads after the matrix: throughput, served predictions, versions, resumes."""
    served = report["served"]
    lat = served["latency_seconds"]
    lines = [f"trained {report['samples_trained']} samples in {report['batches_trained']} batches; "
             f"{report['train_seconds']:.2f}s streaming ({(report['samples_per_second'] or 0):.0f} samples/s), "
             f"{report['eval_seconds']:.2f}s ending buckets, {report['wall_seconds']:.1f}s in all"]
    if served["queries"]:
        acc = served["accuracy"]
        lines.append(f"served {served['queries']} queries ({served['samples']} samples not yet trained on): "
                     f"accuracy {'-' if acc is None else f'{100 * acc:.2f}%'}, latency p50 "
                     f"{1000 * lat['p50']:.1f} ms, p99 {1000 * lat['p99']:.1f} ms; model versions "
                     f"{report['model_versions']['served_first']}..{report['model_versions']['served_last']}, "
                     f"trailing the data sent by {served['mean_lag_batches']:.0f} batches on average"
                     + (f"; {served['failed_queries']} failed" if served["failed_queries"] else ""))
    lines.append(f"durable: the final state is in checkpoint {_local(report['final_checkpoint'])}" if report.get("durable")
                 else "NOT durable: the server has no checkpoint directory, so a restart loses this training")
    prequential = report["prequential_accuracy"]
    lines.append(f"prequential accuracy {'-' if prequential is None else f'{100 * prequential:.2f}%'}; "
                 f"final model version {report['model_versions']['final']}")
    if report["resumes"]:
        lines.append(f"resumed {len(report['resumes'])} time(s) after the server went away; "
                     f"{report['retrained_batches']} batches sent again, {report['duplicate_acks']} duplicates dropped")
    return lines


def _local(path: str) -> str:
    """A server's path as this machine's user would type it: relative when it lies below the working
    directory (a local server's), as given otherwise."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path
