"""The monitoring stack against a real Prometheus: Debian's `prometheus` runs on loopback with the
shipped config and alert rules (only the scrape target, the intervals and the rule file path are
rewritten), a real clstream server (gRPC, training worker, metrics endpoint) runs with the compose
file's server environment, a short stream plays through it (held-out sets, three buckets,
predictions with their true labels, one malformed prediction), and then EVERY expression of the
dashboard and of the rules goes through Prometheus' HTTP API. A prediction replica follows the server
(`--follow`), scraped as the shipped config's clstream-replicas job, so the replica panels and
alerts have their series too.

Dashboard expressions must be valid PromQL and return data: a finite value, over the stream for
range queries (as Grafana's time series and stat panels ask) or now for instant ones (table,
bar gauge), and every label their legend or table needs. Rule expressions must be valid, name only
series that exist, and Prometheus itself must report every rule evaluated without error. An alert
is quiet on a healthy stream, so its expression returns nothing; what must return finite data is
the quantity it thresholds: the expression without its final comparison with a number (for an
`a > x and b == y` rule, both a and b; see `alert_quantities`). Otherwise an alert keyed on a
quantity that is never there (a misspelt label value, a `rate` of a gauge, a window no series
fills) would pass every other check and could never fire.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from cl_engine.guard import REASONS as SKIP_REASONS
from monitoring_support import (COMPOSE, DASHBOARD, DOCKER, NOT_ON_DASHBOARD, PROMETHEUS_CONFIG, alert_quantities,
                                dashboard_metrics, dashboard_targets, expr_without_threshold, grafana_to_promql,
                                load_yaml, metric_of, rule_files, rules, selectors)

grpc = pytest.importorskip("grpc")
pytest.importorskip("server.main", reason="server/ is not in this checkout")

SCRAPE_SECONDS = 1
BUCKETS = 3
SAMPLES_PER_BUCKET = 150
BATCH = 10
PACE_SECONDS = 0.08       # between training batches: the stream lasts several scrapes
DEADLINE_SECONDS = 45     # start to evaluation; with the shutdown, the test stays under a minute
# Prometheus' own series: present only while an alert is pending or firing, so not required here.
OPTIONAL_SELECTORS = ("ALERTS",)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Deadline:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def wait_for(self, what: str, predicate, poll: float = 0.25, at_most: float | None = None):
        end = time.monotonic() + min(self.left(), at_most if at_most is not None else self.left())
        last = None
        while time.monotonic() < end:
            try:
                value = predicate()
                if value:
                    return value
                last = value
            except (OSError, urllib.error.URLError, ValueError) as e:
                last = e
            time.sleep(poll)
        pytest.fail(f"timed out waiting for {what} (last: {last!r})")


class PrometheusAPI:
    def __init__(self, base: str):
        self.base = base

    def get(self, path: str, **params) -> dict:
        url = f"{self.base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:  # a bad query answers 400 with the parser's error
            body = json.load(e)
        return body

    def query(self, expr: str, **params) -> dict:
        return self.get("/api/v1/query", query=expr, **params)

    def query_range(self, expr: str, start: float, end: float, step: float) -> dict:
        return self.get("/api/v1/query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=step)

    def scalar(self, expr: str) -> float | None:
        body = self.query(expr)
        result = body.get("data", {}).get("result", [])
        return float(result[0]["value"][1]) if body.get("status") == "success" and result else None


def finite_values(body: dict) -> list[float]:
    out = []
    for series in body["data"]["result"]:
        points = series.get("values") or [series["value"]]
        out.extend(v for v in (float(p[1]) for p in points) if math.isfinite(v))
    return out


def legend_labels(legend: str) -> list[str]:
    import re

    return re.findall(r"\{\{\s*(\w+)\s*\}\}", legend or "")


# -- the processes ---------------------------------------------------------------------------------------

def start_server(tmp_path: Path, monkeypatch):
    """A real clstream-server (gRPC, training worker, metrics endpoint), in this process, from the
    compose file's server environment (unset pass-throughs stay unset), on loopback and free ports.
    In-process: a second torch import costs tens of seconds on a loaded machine; the suite's
    conftest already keeps torch to one intra-op thread. The process entry point and SIGTERM are the
    service tests' subject."""
    from server.service import Service
    from server.settings import load_settings

    for key in list(os.environ):
        if key.startswith("CLSTREAM_"):
            monkeypatch.delenv(key)
    service = load_yaml(COMPOSE)["services"]["server"]
    for key, value in (service.get("environment") or {}).items():
        if value is not None:
            monkeypatch.setenv(key, str(value))
    monkeypatch.setenv("CLSTREAM_GUARDED_PROMOTION", "true")  # a pass-through: its series must carry data too
    # every check promotes: 15 batches a bucket leave the canary accuracy near chance, where a seed's luck
    # would hold serving back and the final version would never reach the replica
    monkeypatch.setenv("CLSTREAM_PROMOTION_TOLERANCE", "1")
    settings = load_settings([], host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0,
                             checkpoint_dir=tmp_path / "ckpt", device="cpu", shutdown_grace_seconds=1.0)
    return Service(settings).start()


def start_replica(server):
    """A prediction replica following `server` (the compose environment's learner-only settings off)."""
    from server.service import Service
    from server.settings import load_settings

    settings = load_settings([], host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0,
                             checkpoint_dir=None, device="cpu", shutdown_grace_seconds=1.0,
                             follow=f"127.0.0.1:{server.port}")
    return Service(settings).start()


def prometheus_config(tmp_path: Path, metrics_port: int, replica_metrics_port: int) -> Path:
    """The shipped config with the target rewritten to the test's server and a 1 s scrape."""
    config = load_yaml(PROMETHEUS_CONFIG)
    config["global"].update(scrape_interval=f"{SCRAPE_SECONDS}s", scrape_timeout=f"{SCRAPE_SECONDS}s",
                            evaluation_interval=f"{SCRAPE_SECONDS}s")
    config["rule_files"] = [str((PROMETHEUS_CONFIG.parent / f).resolve()) for f in config["rule_files"]]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "clstream"]
    for key in ("scrape_interval", "scrape_timeout"):
        job.pop(key, None)
    (static,) = job["static_configs"]
    static["targets"] = [f"127.0.0.1:{metrics_port}"]
    (replicas,) = [j for j in config["scrape_configs"] if j["job_name"] == "clstream-replicas"]
    (static,) = replicas["static_configs"]
    static["targets"] = [f"127.0.0.1:{replica_metrics_port}"]
    path = tmp_path / "prometheus.yml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def start_prometheus(binary: str, config: Path, tmp_path: Path, deadline: Deadline):
    port = free_port()
    log = open(tmp_path / "prometheus.log", "w")
    process = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                               stdout=log, stderr=subprocess.STDOUT)
    api = PrometheusAPI(f"http://127.0.0.1:{port}")

    def ready():
        if process.poll() is not None:
            pytest.fail(f"prometheus exited: {(tmp_path / 'prometheus.log').read_text()[-3000:]}")
        with urllib.request.urlopen(f"{api.base}/-/ready", timeout=2) as r:
            return r.status == 200

    deadline.wait_for("Prometheus to be ready", ready, at_most=20)
    return process, api


def stop(process: subprocess.Popen, timeout: float = 10) -> int | None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    return process.returncode


# -- the stream -------------------------------------------------------------------------------------------

class Stream:
    """digits-rotated, 3 buckets of 150 samples, as the messages a replay client sends: held-out
    sets, then paced batches bucket by bucket, each bucket ended; predictions alongside, with their
    true labels as the replay client's queries send them (one malformed). Built before anything starts, so the servers' clocks only see the stream."""

    def __init__(self):
        import torch

        from cl_engine import StreamOptions, build_stream
        from cl_engine.schedule import bucket_batches
        from clstream_proto import continual_learner_pb2 as pb
        from server.codec import encode_samples

        self.pb = pb
        stream = build_stream("digits-rotated", StreamOptions(num_buckets=BUCKETS, samples_per_bucket=SAMPLES_PER_BUCKET))
        schema = pb.Schema(class_names=stream.class_names, input_shape=stream.input_shape)
        self.eval_sets = []
        for j, bucket in enumerate(stream.buckets):
            x, y = bucket.test.batch(torch.arange(len(bucket.test)))
            self.eval_sets.append(pb.EvalSetChunk(bucket=j, samples=encode_samples(x), labels=y.tolist(),
                                                  schema=schema))
        self.batches, sequence = [], 0
        for b, bucket in enumerate(stream.buckets):
            messages = []
            for index in bucket_batches(len(bucket.train), BATCH, 1, 0, b):
                x, y = bucket.train.batch(index, train=True)
                sequence += 1
                messages.append(pb.TrainBatch(stream_id="monitoring", sequence=sequence, bucket=b,
                                              samples=encode_samples(x), labels=y.tolist(), schema=schema))
            self.batches.append(messages)
        probe_x, probe_y = stream.buckets[0].test.batch(torch.arange(16) * 30)  # several classes
        self.probe = pb.PredictRequest(samples=encode_samples(probe_x), top_k=3, labels=probe_y.tolist())
        self.bad = pb.PredictRequest(samples=encode_samples(torch.zeros(2, 3, 3)))  # wrong shape
        self.bad_batch = pb.TrainBatch(stream_id="monitoring-bad", sequence=1, bucket=0,  # a label out of range
                                       samples=encode_samples(probe_x), schema=schema,
                                       labels=[len(stream.class_names)] * len(probe_y))

    def play(self, port: int, deadline: Deadline) -> dict:
        from clstream_proto import continual_learner_pb2_grpc as pb_grpc

        pb = self.pb
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.ContinualLearnerStub(channel)
        for chunk in self.eval_sets:
            stub.RegisterEvalSet(iter([chunk]), timeout=deadline.left())
        done = threading.Event()
        predictions = []

        def predict_while_training():
            while not done.wait(0.1):
                try:
                    predictions.append(stub.Predict(self.probe, timeout=10).model_version)
                except grpc.RpcError as e:
                    if e.code() != grpc.StatusCode.FAILED_PRECONDITION:  # before a model exists
                        raise

        predictor = threading.Thread(target=predict_while_training, daemon=True)
        predictor.start()
        acks = []
        try:
            for b, messages in enumerate(self.batches):
                def paced(messages=messages):
                    for m in messages:
                        yield m
                        time.sleep(PACE_SECONDS)

                acks.extend(stub.Train(paced(), timeout=deadline.left()))
                if b == 0:  # a malformed prediction and batch: the error series must exist
                    with pytest.raises(grpc.RpcError) as bad_call:
                        stub.Predict(self.bad, timeout=10)
                    assert bad_call.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                    with pytest.raises(grpc.RpcError) as bad_call:
                        list(stub.Train(iter([self.bad_batch]), timeout=10))
                    assert bad_call.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                stub.EndBucket(pb.EndBucketRequest(bucket=b), timeout=deadline.left())
        finally:
            done.set()
            predictor.join(10)
        status = stub.GetStatus(pb.GetStatusRequest(), timeout=10)
        channel.close()
        assert all(a.applied for a in acks) and predictions, "the stream itself failed"
        return {"samples": status.samples_trained, "rows": len(status.accuracy_matrix),
                "version": status.model_version}


# -- the quantities behind the alerts (no Prometheus needed) ------------------------------------------------

def test_alert_quantities_drop_only_the_final_threshold():
    assert expr_without_threshold("clstream_forgetting_ratio > 0.20") == "clstream_forgetting_ratio"
    assert expr_without_threshold("(sum(rate(a[5m])) / sum(rate(b[5m]))) >= 1e-3") == "sum(rate(a[5m])) / sum(rate(b[5m]))"
    assert expr_without_threshold("(a) / (b) > bool 0") == "(a) / (b)"
    assert expr_without_threshold("up == 0") == "up" and expr_without_threshold("rate(a[5m])") == "rate(a[5m])"
    assert alert_quantities("(min_over_time(a[5m]) > 0)\nand on (job, instance)\n(increase(b[5m]) == 0)") == [
        "min_over_time(a[5m])", "increase(b[5m])"]
    assert alert_quantities("a > 1 unless ignoring (code) sum by (job) (b{x=\"and\"}) < 2") == [
        "a", 'sum by (job) (b{x="and"})']
    for rule in rules():
        if "alert" in rule:  # every shipped alert thresholds something
            assert alert_quantities(rule["expr"]) != [rule["expr"].strip()], rule["alert"]


# -- the test -----------------------------------------------------------------------------------------------

def test_every_dashboard_and_rule_expression_against_real_prometheus(prometheus, tmp_path, monkeypatch):
    stream = Stream()
    deadline = Deadline(DEADLINE_SECONDS)
    server = start_server(tmp_path, monkeypatch)
    replica = start_replica(server)
    prom = None
    try:
        # the image's health check, against the real server
        health = subprocess.run([sys.executable, str(DOCKER / "healthcheck.py")], capture_output=True, text=True,
                                timeout=30, env={**os.environ, "CLSTREAM_PORT": str(server.port)})
        assert health.returncode == 0 and "SERVING" in health.stdout, health.stdout + health.stderr

        prom, api = start_prometheus(prometheus, prometheus_config(tmp_path, server.metrics_port, replica.metrics_port), tmp_path, deadline)
        deadline.wait_for("the first scrape", lambda: api.scalar('up{job="clstream"}') == 1, at_most=15)
        started = time.time()
        played = stream.play(server.port, deadline)

        # Prometheus has the final state once it scraped after the last bucket's checkpoint
        deadline.wait_for("a scrape of the final state", lambda: (
            api.scalar("clstream_samples_trained_total") == played["samples"]
            and api.scalar("count(clstream_accuracy_matrix_ratio)") == played["rows"] * BUCKETS
            and api.scalar("clstream_model_version") == played["version"]
            and api.scalar("clstream_replica_serving_version") == played["version"]))
        time.sleep(2 * SCRAPE_SECONDS)  # a few more samples after the end, as a live dashboard would see
        end = time.time()
        # the model-safety series carry data: one canary check per bucket end, both canary accuracies,
        # the step guard's counters (zero on this healthy stream) for every reason
        assert api.scalar("sum(clstream_promotion_decisions_total)") == BUCKETS
        for model in ("learner", "serving"):
            assert 0 < api.scalar(f'clstream_canary_accuracy_ratio{{model="{model}"}}') <= 1
        assert api.scalar("count(clstream_skipped_steps_total)") == len(SKIP_REASONS)

        failures = []
        # -- every metric the server and the replica export has a panel, or is listed as needing none ----
        dashboard = json.loads(DASHBOARD.read_text())
        names = api.get("/api/v1/label/__name__/values")["data"]
        exported = {metric_of(n) for n in names if n.startswith("clstream_")}
        on_dashboard = {m for m in dashboard_metrics(dashboard) if m.startswith("clstream_")}
        assert exported - on_dashboard - set(NOT_ON_DASHBOARD) == set(), "metrics with no panel"
        assert set(NOT_ON_DASHBOARD) <= exported - on_dashboard, "listed as needing no panel, but not exported or on one"
        assert on_dashboard <= exported, "panels query metrics nothing exports"

        # -- the dashboard: every query as Grafana sends it ---------------------------------------------
        step = SCRAPE_SECONDS
        rate_interval = f"{max(step + SCRAPE_SECONDS, 4 * SCRAPE_SECONDS)}s"  # Grafana's $__rate_interval
        targets = dashboard_targets(dashboard)
        assert targets
        for panel, target in targets:
            where = f"panel {panel['title']!r} {target['refId']}: {target['expr']}"
            expr = grafana_to_promql(target["expr"], rate_interval)
            body = (api.query(expr, time=f"{end:.3f}") if target.get("instant")
                    else api.query_range(expr, started, end, step))
            if body.get("status") != "success":
                failures.append(f"{where}: invalid: {body.get('error')}")
                continue
            if not finite_values(body):
                failures.append(f"{where}: no data")
                continue
            for label in legend_labels(target.get("legendFormat")):
                if any(label not in s["metric"] for s in body["data"]["result"]):
                    failures.append(f"{where}: legend needs label {label!r}")
            for t in panel.get("transformations", []):
                for key in ("rowField", "columnField"):
                    label = t.get("options", {}).get(key)
                    if label and any(label not in s["metric"] for s in body["data"]["result"]):
                        failures.append(f"{where}: {t['id']} needs label {label!r}")
            for selector in selectors(expr):
                if not selector.startswith(OPTIONAL_SELECTORS) and not api.scalar(f"count({selector})"):
                    failures.append(f"{where}: no series {selector}")

        # -- the rules: valid, their series present, evaluated by Prometheus without error -------------
        shipped = rules()
        assert shipped
        for rule in shipped:
            name = rule.get("alert") or rule.get("record")
            body = api.query(rule["expr"], time=f"{end:.3f}")
            if body.get("status") != "success":
                failures.append(f"rule {name}: invalid: {body.get('error')}")
            for selector in selectors(rule["expr"]):
                if not selector.startswith(OPTIONAL_SELECTORS) and not api.scalar(f"count({selector})"):
                    failures.append(f"rule {name}: no series {selector}")
            if "alert" in rule:  # the quantity behind each threshold has data, so the alert can fire
                for quantity in alert_quantities(rule["expr"]):
                    body = api.query(quantity, time=f"{end:.3f}")
                    if body.get("status") != "success" or not finite_values(body):
                        failures.append(f"rule {name}: its quantity {quantity!r} returns no data "
                                        f"({body.get('error') or 'empty'})")

        def evaluated():
            groups = api.get("/api/v1/rules")["data"]["groups"]
            loaded = {r["name"]: r for g in groups for r in g["rules"]}
            return loaded if all(r["health"] != "unknown" for r in loaded.values()) else None

        loaded = deadline.wait_for("every rule evaluated", evaluated, at_most=10)
        assert set(loaded) == {r.get("alert") or r.get("record") for r in shipped}
        failures += [f"rule {n}: health {r['health']}: {r.get('lastError')}" for n, r in loaded.items()
                     if r["health"] != "ok"]
        target_health = [t["health"] for t in api.get("/api/v1/targets")["data"]["activeTargets"]]
        assert target_health == ["up", "up"]
        assert not failures, "\n".join(failures)
        assert len(rule_files()) >= 1 and deadline.left() > 0
    finally:
        if prom is not None:
            stop(prom, timeout=5)
        replica.stop(grace=1.0)
        server.stop(grace=1.0)
