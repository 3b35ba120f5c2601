"""What a person watching the server sees: /metrics with every metric named in the issue, health
checking (grpc.health.v1) and server reflection for generic gRPC tools."""
from __future__ import annotations

import math
import queue
import threading
import time
import urllib.request

import grpc
import pytest
import torch
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from prometheus_client.parser import text_string_to_metric_families

from clstream_proto import continual_learner_pb2 as pb
from server.codec import encode_samples
from server.metrics import LEARNING_METRICS
from service_helpers import base_settings, channel_to, register_all, train_batches, train_buckets

EXPECTED = {  # name in the exposition → type
    "clstream_samples_trained": "counter", "clstream_batches_trained": "counter",
    "clstream_train_step_seconds": "histogram", "clstream_train_loss": "gauge",
    "clstream_prequential_accuracy_ratio": "gauge", "clstream_prequential_accuracy_overall_ratio": "gauge",
    "clstream_current_bucket": "gauge", "clstream_model_version": "gauge", "clstream_serving_version": "gauge",
    "clstream_accuracy_matrix_ratio": "gauge", "clstream_initial_accuracy_ratio": "gauge",
    "clstream_learning_metric_ratio": "gauge", "clstream_forgetting_ratio": "gauge",
    "clstream_buffer_samples": "gauge", "clstream_buffer_capacity_samples": "gauge",
    "clstream_buffer_allocated_bytes": "gauge", "clstream_buffer_bucket_samples": "gauge",
    "clstream_buffer_bucket_bytes": "gauge", "clstream_buffer_class_samples": "gauge",
    "clstream_buffer_class_bytes": "gauge", "clstream_gem_projections": "counter",
    "clstream_gem_qp_fallbacks": "counter", "clstream_predict_requests": "counter",
    "clstream_predict_seconds": "histogram", "clstream_requests": "counter", "clstream_queue_depth": "gauge",
    "clstream_queue_capacity": "gauge", "clstream_last_checkpoint_timestamp_seconds": "gauge",
    "clstream_checkpoints": "counter", "clstream_checkpoint_seconds": "histogram",
    "clstream_drift_statistic": "gauge", "clstream_drift_threshold": "gauge", "clstream_drift_events": "counter",
    "clstream_end_bucket_seconds": "histogram", "clstream_duplicate_batches": "counter",
    "clstream_rejected_batches": "counter", "clstream_serving": "gauge", "clstream_eval_sets": "gauge",
    "clstream_train_streams_open": "gauge", "clstream_served_samples": "counter",
    "clstream_calls_open": "gauge", "clstream_calls_limit": "gauge", "clstream_calls_refused": "counter",
    "clstream_skipped_steps": "counter", "clstream_promotion_decisions": "counter",
}


def scrape(service) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=10).read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return families


def value(families, name, suffix="", **labels) -> float:
    for s in families[name].samples:
        if s.name == name + suffix and all(s.labels.get(k) == str(v) for k, v in labels.items()):
            return s.value
    raise KeyError(f"{name}{suffix} {labels}")


@pytest.mark.parametrize("learner_process", [False, True], ids=["learner-thread", "learner-process"])
def test_metrics_serve_every_named_metric_with_sane_values(start, connect, stream, tmp_path, learner_process):
    service = start(checkpoint_dir=tmp_path, drift_threshold=3.0, learner_process=learner_process)
    stub = connect(service)
    register_all(stub, stream)
    train_buckets(stub, stream, 2)
    list(stub.Train(train_batches(stream, 0, limit=1)))  # a duplicate
    x = stream.buckets[0].test.batch(torch.arange(4))[0]
    stub.Predict(pb.PredictRequest(samples=encode_samples(x)))
    with pytest.raises(grpc.RpcError):
        stub.Predict(pb.PredictRequest())
    with pytest.raises(grpc.RpcError):
        list(stub.Train(iter([pb.TrainBatch(stream_id="s", sequence=99, bucket=2, samples=encode_samples(x),
                                            labels=[42] * 4)])))
    status = stub.GetStatus(pb.GetStatusRequest())
    m = scrape(service)

    missing = {name for name in EXPECTED if name not in m}
    assert not missing
    for name, kind in EXPECTED.items():
        assert m[name].type == kind, name
    for name, family in m.items():  # DESIGN.md's conventions hold for everything exported
        if name.startswith("clstream_"):
            assert family.type != "histogram" or name.endswith("_seconds"), name
            for s in family.samples:
                assert family.type != "counter" or s.name.endswith(("_total", "_created")), s.name
                assert set(s.labels) <= {"bucket", "train_bucket", "eval_bucket", "class", "family", "metric",
                                         "method", "code", "outcome", "le", "reason", "budget", "decision", "model"}, s
                if name.endswith("_ratio"):
                    assert -1.0 <= s.value <= 1.0, s

    assert value(m, "clstream_samples_trained", "_total") == status.samples_trained == 300
    assert value(m, "clstream_batches_trained", "_total") == status.batches_trained == 30
    assert value(m, "clstream_train_step_seconds", "_count") == 30
    assert value(m, "clstream_train_step_seconds", "_sum") > 0
    assert value(m, "clstream_model_version") == value(m, "clstream_serving_version") == 30
    assert value(m, "clstream_current_bucket") == 2
    assert 0 < value(m, "clstream_train_loss") < 10
    assert value(m, "clstream_prequential_accuracy_ratio") == pytest.approx(status.prequential_accuracy)
    for i, row in enumerate(status.accuracy_matrix):
        for j, a in enumerate(row.accuracy):
            assert value(m, "clstream_accuracy_matrix_ratio", train_bucket=i, eval_bucket=j) == pytest.approx(a)
    assert value(m, "clstream_initial_accuracy_ratio", eval_bucket=2) == pytest.approx(status.initial_accuracy.accuracy[2])
    assert value(m, "clstream_learning_metric_ratio", family="gem", metric="bwt") == pytest.approx(status.metrics.bwt)
    assert value(m, "clstream_learning_metric_ratio", family="clear", metric="score") == pytest.approx(
        status.metrics.clear_score)
    assert len([s for s in m["clstream_learning_metric_ratio"].samples]) == 10
    assert value(m, "clstream_forgetting_ratio", bucket=0) == pytest.approx(status.forgetting_per_bucket[0])
    buffer = status.buffer
    assert value(m, "clstream_buffer_samples") == buffer.size > 0
    assert sum(s.value for s in m["clstream_buffer_bucket_samples"].samples) == buffer.size
    assert sum(s.value for s in m["clstream_buffer_class_samples"].samples) == buffer.size
    assert value(m, "clstream_buffer_bucket_bytes", bucket=0) == pytest.approx(
        buffer.by_bucket[0] * buffer.bytes / buffer.capacity)
    assert value(m, "clstream_gem_projections", "_total") == 0 == value(m, "clstream_gem_qp_fallbacks", "_total")
    assert value(m, "clstream_predict_requests", "_total", code="OK") == 1
    assert value(m, "clstream_predict_requests", "_total", code="INVALID_ARGUMENT") == 1
    assert value(m, "clstream_predict_seconds", "_count") == 2
    assert value(m, "clstream_requests", "_total", method="EndBucket", code="OK") == 2
    assert value(m, "clstream_rejected_batches", "_total", code="INVALID_ARGUMENT") == 1
    assert value(m, "clstream_duplicate_batches", "_total") == 1
    assert value(m, "clstream_queue_depth") == 0 and value(m, "clstream_queue_capacity") == 64
    assert value(m, "clstream_checkpoints", "_total") >= 2
    assert value(m, "clstream_last_checkpoint_timestamp_seconds") == pytest.approx(status.last_checkpoint_time)
    assert value(m, "clstream_drift_statistic") >= 0 and value(m, "clstream_drift_threshold") == 3.0
    assert value(m, "clstream_drift_events", "_total") == status.drift.events
    assert value(m, "clstream_serving") == 1 and value(m, "clstream_eval_sets") == 3
    assert value(m, "clstream_train_streams_open") == 0
    assert value(m, "clstream_served_samples", "_total", outcome="correct") == 0  # no labels sent
    assert value(m, "clstream_served_samples", "_total", outcome="wrong") == 0


def open_streams(service) -> float:
    return value(scrape(service), "clstream_train_streams_open")


def eventually(what: str, predicate, seconds: float = 10.0) -> None:
    end = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_open_train_streams_count_calls_in_progress_however_they_end(start, connect, stream):
    """1 while a Train call is open (even before its first batch), 0 once it ends: the client closed
    its side, the client cancelled, or the server rejected a batch."""
    service = start()
    stub = connect(service)
    assert open_streams(service) == 0

    def held_open(batches):
        """The batches, then a wait until `release` gets something (None: end the stream)."""
        release: queue.Queue = queue.Queue()

        def requests():
            yield from batches
            release.get()

        return requests(), release

    # the client closes its side of the stream
    requests, release = held_open(train_batches(stream, 0, limit=2))
    call = stub.Train(requests)
    acks = [next(call), next(call)]
    assert [a.sequence for a in acks] == [1, 2]
    assert open_streams(service) == 1
    release.put(None)
    assert list(call) == []
    eventually("the closed stream to be uncounted", lambda: open_streams(service) == 0)

    # two at once, then the client cancels both: one mid-stream, one before it sent anything
    requests, _ = held_open(train_batches(stream, 0, first_sequence=3, limit=1))
    first = stub.Train(requests)
    assert next(first).sequence == 3
    idle, _ = held_open([])
    second = stub.Train(idle)
    eventually("two open streams", lambda: open_streams(service) == 2)
    first.cancel()
    eventually("one open stream after a cancel", lambda: open_streams(service) == 1)
    second.cancel()
    eventually("no open stream after both cancels", lambda: open_streams(service) == 0)

    # a rejected batch ends the call with an error
    bad = pb.TrainBatch(stream_id="s", sequence=99, bucket=0, samples=encode_samples(torch.zeros(1, 3, 3)),
                        labels=[0])
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Train(iter([bad])))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    eventually("the rejected stream to be uncounted", lambda: open_streams(service) == 0)


def test_a_shift_in_the_stream_shows_as_drift(start, connect, stream):
    """Labels that were always 0 become always 1: the prequential error jumps and Page-Hinkley fires."""
    service = start(drift_threshold=20.0)
    stub = connect(service)
    x = stream.buckets[0].train.batch(torch.arange(10))[0]

    def batches(first, bucket, label, count):
        for k in range(count):
            yield pb.TrainBatch(stream_id="s", sequence=first + k, bucket=bucket, samples=encode_samples(x),
                                labels=[label] * 10, schema=pb.Schema(class_names=stream.class_names,
                                                                      input_shape=stream.input_shape))

    list(stub.Train(batches(1, 0, 0, 20)))
    assert stub.GetStatus(pb.GetStatusRequest()).drift.events == 0
    stub.EndBucket(pb.EndBucketRequest(bucket=0))
    list(stub.Train(batches(21, 1, 1, 10)))
    drift = stub.GetStatus(pb.GetStatusRequest()).drift
    assert drift.events == 1 and 21 < drift.last_event_version <= 30
    assert value(scrape(service), "clstream_drift_events", "_total") == 1


def test_health_is_not_serving_until_the_server_is_ready(monkeypatch):
    """Checked over the wire from inside start(), after the port is up and before start() returns."""
    import server.service as service_module

    seen = []

    def metrics_server_then_check(*args):
        with channel_to(service) as channel:
            seen.append(health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status)
        return real(*args)

    real = service_module.start_metrics_server
    monkeypatch.setattr(service_module, "start_metrics_server", metrics_server_then_check)
    service = service_module.Service(base_settings())
    service.start()
    try:
        assert seen == [health_pb2.HealthCheckResponse.NOT_SERVING]
        with channel_to(service) as channel:
            assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status == \
                health_pb2.HealthCheckResponse.SERVING
    finally:
        service.stop(grace=0.5)


def test_health_reports_serving_and_not_serving_during_shutdown(start):
    service = start()
    channel = channel_to(service)
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "clstream.v1.ContinualLearner"):
        assert health.Check(health_pb2.HealthCheckRequest(service=name)).status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as e:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    stopper = threading.Thread(target=service.stop, kwargs={"grace": 2.0})
    stopper.start()
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    stopper.join()
    channel.close()


def test_reflection_lets_generic_tools_discover_the_service(start):
    service = start()
    channel = channel_to(service)
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    reply = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in reply.list_services_response.service}
    assert {"clstream.v1.ContinualLearner", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= names
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    service_descriptor = pool.FindServiceByName("clstream.v1.ContinualLearner")
    assert {m.name for m in service_descriptor.methods} == {"Train", "EndBucket", "RegisterEvalSet", "Predict",
                                                            "Evaluate", "GetStatus", "ForgetStream", "Rollback", "WatchModel"}
    train = service_descriptor.methods_by_name["Train"]
    assert train.input_type.full_name == "clstream.v1.TrainBatch"
    assert "sequence" in train.input_type.fields_by_name
    channel.close()


def test_a_gem_run_exports_its_projections_buffer_bytes_and_every_learning_metric(start, connect, stream):
    """GEM through the real server: projections counted, bytes by class from the buffer's own storage,
    and all 10 learning metrics (both families) equal to GetStatus. (Real memories never make
    quadprog fail here; the next test makes it fail to show the fallbacks counted.)"""
    service = start(strategy="gem", memory_per_bucket=20)
    stub = connect(service)
    register_all(stub, stream)
    train_buckets(stub, stream, 2)
    status = stub.GetStatus(pb.GetStatusRequest())
    m = scrape(service)
    counters = service.worker.learner.counters
    assert value(m, "clstream_gem_projections", "_total") == status.gem_projections == counters["projections"] > 0
    assert value(m, "clstream_gem_qp_fallbacks", "_total") == status.qp_fallbacks == counters.get("qp_fallbacks", 0)
    for family, label, key in LEARNING_METRICS:
        expected = getattr(status.metrics, key)
        if math.isnan(expected):  # not measured yet: left out of the exposition, never exported as NaN
            with pytest.raises(KeyError):
                value(m, "clstream_learning_metric_ratio", family=family, metric=label)
        else:
            assert value(m, "clstream_learning_metric_ratio", family=family, metric=label) == pytest.approx(expected)
    assert sum(not math.isnan(getattr(status.metrics, key)) for _, _, key in LEARNING_METRICS) >= 8
    buffer = service.worker.learner.buffer
    per_sample = sum(t.nbytes for t in (buffer.x, buffer.y, buffer.bucket, buffer.ids, buffer.priority)) / buffer.capacity
    assert value(m, "clstream_buffer_allocated_bytes") == status.buffer.bytes == per_sample * buffer.capacity
    assert status.buffer.by_class and sum(status.buffer.by_class.values()) == status.buffer.size == 40
    for c, n in status.buffer.by_class.items():
        assert value(m, "clstream_buffer_class_bytes", **{"class": c}) == n * per_sample


def test_qp_failures_fall_back_are_counted_and_the_stream_goes_on(start, connect, stream, monkeypatch):
    """quadprog raising its real error ("constraints are inconsistent") on every solve: each violated
    step falls back to the A-GEM projection, the stream completes, and /metrics counts every one."""
    import cl_engine.projection

    def inconsistent(*args, **kwargs):
        raise ValueError("constraints are inconsistent, no solution")

    monkeypatch.setattr(cl_engine.projection.quadprog, "solve_qp", inconsistent)
    service = start(strategy="gem", memory_per_bucket=20)
    stub = connect(service)
    register_all(stub, stream)
    acks = train_buckets(stub, stream, 2)
    assert len(acks) == 30 and all(a.applied for a in acks)
    status = stub.GetStatus(pb.GetStatusRequest())
    m = scrape(service)
    assert value(m, "clstream_gem_qp_fallbacks", "_total") == status.qp_fallbacks == status.gem_projections > 0
    assert value(m, "clstream_gem_projections", "_total") == status.gem_projections
    assert len(status.accuracy_matrix) == 2


def test_labelled_predictions_are_scored_into_served_accuracy(start, connect, stream):
    """PredictRequest.labels: the served answers are counted correct or wrong against them (never
    trained on); labels of the wrong length or out of range are INVALID_ARGUMENT, and nothing counts."""
    service = start()
    stub = connect(service)
    list(stub.Train(train_batches(stream, 0)))
    x, y = stream.buckets[0].test.batch(torch.arange(40) * 13)  # every class (the set is sorted by class)
    trained = stub.GetStatus(pb.GetStatusRequest()).samples_trained

    def served() -> dict:
        m = scrape(service)
        return {o: value(m, "clstream_served_samples", "_total", outcome=o) for o in ("correct", "wrong")}

    assert served() == {"correct": 0, "wrong": 0}
    answer = stub.Predict(pb.PredictRequest(samples=encode_samples(x), labels=y.tolist(), top_k=2))
    correct = sum(p.label == t for p, t in zip(answer.predictions, y.tolist()))
    assert 0 < correct < 40  # a model in training: some right, some wrong
    assert served() == {"correct": correct, "wrong": 40 - correct}
    unlabelled = stub.Predict(pb.PredictRequest(samples=encode_samples(x)))
    assert [p.label for p in unlabelled.predictions] == [p.label for p in answer.predictions]
    assert served() == {"correct": correct, "wrong": 40 - correct}  # no labels: not scored

    for labels, expected in (([0] * 39, "39 labels for 40 samples"), (y.tolist()[:-1] + [10], "label 10 at position 39"),
                             ([-1] + y.tolist()[1:], "label -1 at position 0")):
        with pytest.raises(grpc.RpcError) as e:
            stub.Predict(pb.PredictRequest(samples=encode_samples(x), labels=labels))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "labels" in e.value.details() and expected in e.value.details(), e.value.details()
    assert served() == {"correct": correct, "wrong": 40 - correct}
    assert stub.GetStatus(pb.GetStatusRequest()).samples_trained == trained  # scored, never trained on
