"""Prometheus metrics, named per DESIGN.md: prefix clstream_, base units, _total counters,
_seconds histograms, _ratio for fractions; labels only of bounded cardinality (bucket, class,
family/metric, method, code — never stream ids).

Two kinds of source. Timings and request outcomes are instruments updated where they happen. The
learner's state (counts, matrix, memory, drift) is read at scrape time from the status the training
worker last published, so a scrape is one consistent view and survives restarts (a counter such as
samples trained continues from the checkpoint instead of starting again at zero).
"""
from __future__ import annotations

import math
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

# (family, metric label, key in Learner.metrics())
LEARNING_METRICS = (
    ("gem", "acc", "acc"), ("gem", "bwt", "bwt"), ("gem", "fwt", "fwt"), ("gem", "forgetting", "forgetting"),
    ("clear", "in_domain", "in_domain"), ("clear", "next_domain", "next_domain"), ("clear", "acc", "clear_acc"),
    ("clear", "bwt", "clear_bwt"), ("clear", "fwt", "clear_fwt"), ("clear", "score", "clear_score"),
)
FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SLOW = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def _measured(value) -> bool:
    return value is not None and not math.isnan(value)


class StatusCollector(Collector):
    """The learner's published status, rendered at scrape time."""

    def __init__(self, status: Callable[[], dict], live: Callable[[], dict]):
        self.status = status
        self.live = live

    def collect(self):
        s = self.status()
        live = self.live()

        def gauge(name, doc, value, labels=None, samples=()):
            g = GaugeMetricFamily(name, doc, labels=list(labels or []))
            if labels:
                for label_values, v in samples:
                    if _measured(v):
                        g.add_metric([str(x) for x in label_values], v)
            elif _measured(value):
                g.add_metric([], value)
            return g

        def counter(name, doc, value):
            c = CounterMetricFamily(name, doc)
            c.add_metric([], value)
            return c

        yield counter("clstream_samples_trained", "Samples the model has trained on.", s["samples_trained"])
        yield counter("clstream_batches_trained", "Batches the model has trained on (one update each).",
                      s["batches_trained"])
        yield counter("clstream_gem_projections", "GEM/A-GEM gradient projections applied.", s["projections"])
        yield counter("clstream_gem_qp_fallbacks", "GEM QP solves that fell back to a safe answer.",
                      s["qp_fallbacks"])
        skipped = CounterMetricFamily("clstream_skipped_steps", "Training steps the step guard refused (batch "
                                      "consumed, not learned), by reason.", labels=["reason"])
        for reason, n in s["skipped_steps"].items():
            skipped.add_metric([reason], n)
        yield skipped
        promotion = s["promotion"]
        decisions = CounterMetricFamily("clstream_promotion_decisions", "Guarded promotion's canary checks, by "
                                        "decision (promoted, rejected: serving stayed on the last good version).",
                                        labels=["decision"])
        decisions.add_metric(["promoted"], promotion["promotions"])
        decisions.add_metric(["rejected"], promotion["rejections"])
        yield decisions
        yield gauge("clstream_canary_accuracy_ratio", "Guarded promotion: canary accuracy at the last check, of the "
                    "learner's version and of the serving one.", None, ["model"],
                    [(("learner",), promotion["canary_accuracy"]),
                     (("serving",), promotion["serving_canary_accuracy"])])
        yield counter("clstream_drift_events", "Drifts detected in the prequential error stream.",
                      s["drift"]["events"])
        yield gauge("clstream_model_version", "Model version: one per applied update.", s["version"])
        yield gauge("clstream_serving_version", "Version of the snapshot answering Predict.", live["serving_version"])
        yield gauge("clstream_current_bucket", "The bucket open for training.", s["open_bucket"])
        yield gauge("clstream_train_loss", "Training loss of the last applied batch.", s["last_loss"])
        yield gauge("clstream_prequential_accuracy_ratio", "Test-then-train accuracy over the recent window.",
                    s["prequential_accuracy"])
        yield gauge("clstream_prequential_accuracy_overall_ratio", "Test-then-train accuracy over the whole stream.",
                    s["prequential_accuracy_overall"])
        yield gauge("clstream_accuracy_matrix_ratio", "R[i][j]: accuracy on bucket j's held-out set after training "
                    "through bucket i.", None, ["train_bucket", "eval_bucket"],
                    [((i, j), a) for i, row in enumerate(s["matrix"]) for j, a in enumerate(row)])
        yield gauge("clstream_initial_accuracy_ratio", "Accuracy on bucket j's held-out set before any training.",
                    None, ["eval_bucket"], [((j,), a) for j, a in enumerate(s["initial"])])
        yield gauge("clstream_learning_metric_ratio", "Summaries of the accuracy matrix; family gem (acc, bwt, fwt, "
                    "forgetting) or clear (in_domain, next_domain, acc, bwt, fwt, score).", None, ["family", "metric"],
                    [((family, label), s["metrics"][key]) for family, label, key in LEARNING_METRICS])
        yield gauge("clstream_forgetting_ratio", "Forgetting of each bucket: best accuracy before the last row minus "
                    "the last.", None, ["bucket"], [((j,), f) for j, f in enumerate(s["forgetting_per_bucket"])])
        buffer = s["buffer"]
        per_sample = buffer["bytes_per_sample"]
        yield gauge("clstream_buffer_samples", "Samples held in the replay memory.", buffer["size"])
        yield gauge("clstream_buffer_capacity_samples", "Samples the replay memory can hold.", buffer["capacity"])
        yield gauge("clstream_buffer_allocated_bytes", "Bytes of the replay memory's preallocated storage.",
                    buffer["bytes"])
        yield gauge("clstream_buffer_bucket_samples", "Replay memory samples by bucket of origin.", None, ["bucket"],
                    [((b,), n) for b, n in buffer["by_bucket"].items()])
        yield gauge("clstream_buffer_bucket_bytes", "Replay memory bytes by bucket of origin.", None, ["bucket"],
                    [((b,), n * per_sample) for b, n in buffer["by_bucket"].items()])
        yield gauge("clstream_buffer_class_samples", "Replay memory samples by class.", None, ["class"],
                    [((c,), n) for c, n in buffer["by_class"].items()])
        yield gauge("clstream_buffer_class_bytes", "Replay memory bytes by class.", None, ["class"],
                    [((c,), n * per_sample) for c, n in buffer["by_class"].items()])
        yield gauge("clstream_eval_sets", "Registered held-out sets.", len(s["eval_buckets"]))
        yield gauge("clstream_streams", "Training streams with an applied sequence.", len(s["applied_sequences"]))
        yield gauge("clstream_drift_statistic", "Page-Hinkley statistic on the prequential error.",
                    s["drift"]["statistic"])
        yield gauge("clstream_drift_threshold", "Page-Hinkley alarm threshold.", s["drift"]["threshold"])
        if s["last_checkpoint_time"]:
            yield gauge("clstream_last_checkpoint_timestamp_seconds", "Unix time of the last checkpoint.",
                        s["last_checkpoint_time"])
        if s.get("checkpoints"):
            yield gauge("clstream_checkpoint_durable", "1 while the last checkpoint attempt succeeded, 0 while "
                        "checkpoints fail (training state in memory only).", 0.0 if s["checkpoint_error"] else 1.0)
            yield gauge("clstream_batches_since_checkpoint", "Batches applied since the last checkpoint: what a "
                        "crash now would lose.", s["batches_since_checkpoint"])
        yield gauge("clstream_queue_depth", "Training operations waiting for the worker.", live["queue_depth"])
        yield gauge("clstream_queue_capacity", "Training operations the queue holds at most.", live["queue_capacity"])
        yield gauge("clstream_serving", "1 while the server is healthy and serving, 0 otherwise.",
                    1.0 if live["serving"] else 0.0)


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.train_step_seconds = Histogram("clstream_train_step_seconds", "Time of one training step (observe).",
                                            buckets=FAST, registry=r)
        self.end_bucket_seconds = Histogram("clstream_end_bucket_seconds", "Time to end a bucket: consolidate, "
                                            "evaluate, checkpoint.", buckets=SLOW, registry=r)
        self.checkpoint_seconds = Histogram("clstream_checkpoint_seconds", "Time to write a checkpoint.",
                                            buckets=SLOW, registry=r)
        self.checkpoints = Counter("clstream_checkpoints", "Checkpoints written by this process.", registry=r)
        self.checkpoint_failures = Counter("clstream_checkpoint_failures", "Checkpoint writes that failed.",
                                           registry=r)
        self.corrupt_checkpoints = Counter("clstream_corrupt_checkpoints", "Corrupt checkpoints skipped on start.",
                                           registry=r)
        self.predict_requests = Counter("clstream_predict_requests", "Predict calls by status code.", ["code"],
                                        registry=r)
        self.predict_seconds = Histogram("clstream_predict_seconds", "Predict latency.", buckets=FAST, registry=r)
        self.requests = Counter("clstream_requests", "Calls by method and status code.", ["method", "code"],
                                registry=r)
        self.duplicate_batches = Counter("clstream_duplicate_batches", "Batches acknowledged as duplicates "
                                         "(not trained again).", registry=r)
        self.rejected_batches = Counter("clstream_rejected_batches", "Training batches rejected, by status code.",
                                        ["code"], registry=r)
        self.snapshots = Counter("clstream_snapshots", "Serving snapshots published.", registry=r)
        self.calls_open = Gauge("clstream_calls_open", "Calls holding a place in each call budget right now "
                                "(streams, serving, admin).", ["budget"], registry=r)
        self.calls_limit = Gauge("clstream_calls_limit", "Calls each call budget admits at once (streams, serving, "
                                 "admin): the settings max_open_streams, max_concurrent_predictions, "
                                 "max_admin_calls.", ["budget"], registry=r)
        self.calls_refused = Counter("clstream_calls_refused", "Calls refused because their call budget, or the "
                                     "client's share of streams (per_client), was full.", ["budget"], registry=r)
        self.train_streams_open = Gauge("clstream_train_streams_open", "Train calls in progress right now.",
                                        registry=r)
        self.served_samples = Counter("clstream_served_samples", "Predicted samples whose caller sent the true "
                                      "label, by outcome of the served answer (correct, wrong).", ["outcome"],
                                      registry=r)
        for outcome in ("correct", "wrong"):  # both exist from the start: a ratio of rates needs them
            self.served_samples.labels(outcome)

    def watch(self, status: Callable[[], dict], live: Callable[[], dict]) -> None:
        self.registry.register(StatusCollector(status, live))


def start_metrics_server(registry: CollectorRegistry, host: str, port: int):
    """Serve /metrics; returns (http server, bound port). Stop with server.shutdown()."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server, server.server_port

