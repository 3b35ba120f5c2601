"""Call budgets, idle streams and keepalive (server/budgets.py, server/idle.py), through the real
server on loopback: no client's open streams can lock another client out, and health is never refused."""
from __future__ import annotations

import threading
import time

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clstream_proto import continual_learner_pb2 as pb
from clstream_proto import continual_learner_pb2_grpc as pb_grpc
from server.codec import encode_samples
from service_helpers import channel_to, eval_chunks, train_batches
from test_service_observability import scrape, value

OWN_CONNECTION = {"grpc.use_local_subchannel_pool": 1}  # another client: a connection of its own


@pytest.fixture
def release():
    """Set at teardown: every silent request stream below ends then."""
    event = threading.Event()
    yield event
    event.set()


def silent(release: threading.Event, first=()):
    """A request stream that sends `first`, then nothing until released (bounded: 60 s)."""
    yield from first
    release.wait(60)


def wait_done(calls, n: int, seconds: float = 10.0) -> list:
    """The first n of `calls` to end (their handlers refused them), waiting at most `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done = [c for c in calls if c.done()]
        if len(done) >= n:
            return done
        time.sleep(0.05)
    raise AssertionError(f"only {len([c for c in calls if c.done()])} of {len(calls)} calls ended, expected {n}")


def test_idle_streams_lock_out_no_other_call_and_health_is_never_refused(start, connect, stream, release):
    service = start(max_open_streams=16, max_streams_per_client=64, stream_idle_timeout_seconds=0)
    hog = connect(service)
    list(hog.Train(train_batches(stream, 0, limit=1)))  # a model to predict with
    idle = ([hog.Train(silent(release)) for _ in range(10)]
            + [hog.RegisterEvalSet.future(silent(release)) for _ in range(10)])
    refused = wait_done(idle, 4)
    assert len(refused) == 4
    for call in refused:
        assert call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_open_streams" in call.details() and "16 streams" in call.details()

    other_channel = channel_to(service, **OWN_CONNECTION)
    other = pb_grpc.ContinualLearnerStub(other_channel)
    x = encode_samples(stream.buckets[0].test.batch(torch.arange(4))[0])
    health = health_pb2_grpc.HealthStub(other_channel)
    for _ in range(20):  # never refused, though every stream place is taken
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    assert other.GetStatus(pb.GetStatusRequest(), timeout=5).samples_trained == 10
    assert len(other.Predict(pb.PredictRequest(samples=x), timeout=5).predictions) == 4
    with pytest.raises(grpc.RpcError) as e:  # only another stream waits for a place
        list(other.Train(train_batches(stream, 0, first_sequence=2, limit=1), timeout=5))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_open_streams" in e.value.details()
    metrics = scrape(service)  # what an operator sees: the stream budget full, five calls refused by it
    assert value(metrics, "clstream_calls_open", budget="streams") == 16
    assert value(metrics, "clstream_calls_limit", budget="streams") == 16  # at its limit: the dashboard's ratio is 1
    assert value(metrics, "clstream_calls_limit", budget="serving") == service.settings.max_concurrent_predictions
    assert value(metrics, "clstream_calls_refused", "_total", budget="streams") == 5
    assert value(metrics, "clstream_calls_refused", "_total", budget="serving") == 0
    assert sum(s.value for s in metrics["clstream_requests"].samples
               if s.name == "clstream_requests_total" and s.labels["code"] == "RESOURCE_EXHAUSTED") == 5
    release.set()  # the idle streams end: their places come back
    wait_done(idle, 20)
    deadline = time.monotonic() + 10
    while True:
        try:
            assert [a.sequence for a in other.Train(train_batches(stream, 0, first_sequence=2, limit=1))] == [2]
            break
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline
            time.sleep(0.1)
    other_channel.close()


def test_a_silent_stream_is_ended_naming_the_idle_timeout_and_gives_its_place_back(start, connect, stream, release):
    service = start(stream_idle_timeout_seconds=1, max_open_streams=2)
    stub = connect(service)
    train = stub.Train(silent(release, train_batches(stream, 0, limit=1)))
    register = stub.RegisterEvalSet.future(silent(release))
    evaluate_first = stub.Evaluate.future(silent(release))  # no model yet: FAILED_PRECONDITION at once
    assert next(train).applied
    for call in (train, register):
        with pytest.raises(grpc.RpcError) as e:
            list(call) if call is train else call.result(timeout=20)
        assert e.value.code() == grpc.StatusCode.ABORTED, e.value.details()
        assert "stream_idle_timeout_seconds" in e.value.details() and "sent nothing for 1 s" in e.value.details()
    assert evaluate_first.exception(timeout=20).code() == grpc.StatusCode.FAILED_PRECONDITION

    def slow(n: int):  # a batch every 0.4 s for ~2.4 s: slow, but not idle
        for batch in train_batches(stream, 0, first_sequence=2, limit=n):
            time.sleep(0.4)
            yield batch

    assert [a.sequence for a in stub.Train(slow(6), timeout=30)] == list(range(2, 8))  # both places back
    chunks = [pb.EvaluateChunk(samples=c.samples, labels=c.labels) for c in eval_chunks(stream, 0, chunk=100)]
    with pytest.raises(grpc.RpcError) as e:  # Evaluate's request stream is watched too
        stub.Evaluate(silent(release, chunks[:1]), timeout=20)
    assert e.value.code() == grpc.StatusCode.ABORTED and "stream_idle_timeout_seconds" in e.value.details()


def test_one_client_may_hold_only_its_share_of_streams(start, connect, stream, release):
    service = start(auth_tokens=["token-a", "token-b"], max_streams_per_client=2, stream_idle_timeout_seconds=0)
    stub = connect(service)
    a, b = (("authorization", "Bearer token-a"),), (("authorization", "Bearer token-b"),)
    held = [stub.Train(silent(release, train_batches(stream, 0, stream_id=f"a{k}", limit=1)), metadata=a)
            for k in range(2)]
    assert all(next(call).applied for call in held)  # both hold their places (an ack came back)
    third = stub.Train(silent(release), metadata=a)
    with pytest.raises(grpc.RpcError) as e:
        list(third)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_streams_per_client" in e.value.details() and "already has 2 streams open" in e.value.details()
    assert "token-a" not in e.value.details()  # the refusal names the client by a hash, never the secret
    assert [x.applied for x in stub.Train(train_batches(stream, 0, stream_id="b", limit=1), metadata=b)] == [True]
    assert not any(c.done() for c in held)

    plain = connect(start(max_streams_per_client=1, stream_idle_timeout_seconds=0))
    first = plain.Train(silent(release, train_batches(stream, 0, stream_id="p", limit=1)))
    assert next(first).applied
    with pytest.raises(grpc.RpcError) as e:  # without auth a client is its address: loopback here
        list(plain.Train(train_batches(stream, 0, stream_id="q", limit=1)))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "peer 127.0.0.1 already has 1 streams open" in e.value.details() and not first.done()


def test_a_client_that_pings_too_often_is_disconnected(start, stream, release):
    """keepalive_min_ping_seconds is enforced by the server: a client pinging every 100 ms is sent
    GOAWAY (too many pings) and its call ends UNAVAILABLE."""
    service = start(keepalive_min_ping_seconds=10, stream_idle_timeout_seconds=0)
    channel = channel_to(service, **OWN_CONNECTION, **{
        "grpc.keepalive_time_ms": 100, "grpc.keepalive_permit_without_calls": 1,
        "grpc.http2.max_pings_without_data": 0})
    call = pb_grpc.ContinualLearnerStub(channel).Train(silent(release), timeout=30)
    with pytest.raises(grpc.RpcError) as e:
        list(call)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value.details()
    channel.close()


def test_admin_calls_have_a_budget_of_their_own(start, connect, stream, release, monkeypatch):
    """One slow admin call (a ForgetStream held in the worker) fills max_admin_calls=1: another admin
    call is refused naming it, while serving calls and health answer."""
    service = start(max_admin_calls=1)
    stub = connect(service)
    list(stub.Train(train_batches(stream, 0, limit=1)))
    forget, entered = service.worker._forget, threading.Event()

    def slow(op):
        entered.set()
        release.wait(30)
        return forget(op)

    monkeypatch.setattr(service.worker, "_forget", slow)
    held = stub.ForgetStream.future(pb.ForgetStreamRequest(stream_id="s"))
    assert entered.wait(10)  # the ForgetStream call holds the only admin place
    with pytest.raises(grpc.RpcError) as e:
        stub.EndBucket(pb.EndBucketRequest(bucket=0), timeout=5)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_admin_calls" in e.value.details() and "1 admin calls" in e.value.details(), e.value.details()
    other = pb_grpc.ContinualLearnerStub(channel := channel_to(service, **OWN_CONNECTION))
    assert other.GetStatus(pb.GetStatusRequest(), timeout=5).samples_trained == 10
    assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
        health_pb2.HealthCheckResponse.SERVING
    release.set()
    assert held.result(timeout=30).forgotten
    channel.close()
