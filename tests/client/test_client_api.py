"""The client library against the real server: every call, errors as ServiceError, back-off on
UNAVAILABLE (and only there), bearer tokens and mutual TLS."""
from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
import torch

from cl_engine.schedule import bucket_batches
from client.api import Batch, Client, RetryPolicy, Schema, ServiceError
from client.local_server import free_port
from client_helpers import start_service, target


def schema_of(stream) -> Schema:
    return Schema(tuple(stream.class_names), tuple(stream.input_shape))


def batches(stream, bucket, first_sequence=1, stream_id="s", limit=None):
    train = stream.buckets[bucket].train
    for k, index in enumerate(bucket_batches(len(train), 10, 1, 0, bucket)):
        if limit is not None and k >= limit:
            return
        x, y = train.batch(index, train=True)
        yield Batch(stream_id, first_sequence + k, bucket, x, y)


# -- the retry policy --------------------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def failing(code: grpc.StatusCode, times: int, result=42):
    calls = []

    def fn():
        calls.append(1)
        if len(calls) <= times:
            raise ServiceError(code, "down", "GetStatus")
        return result
    return fn, calls


def test_backoff_is_exponential_capped_and_gives_up_after_its_attempts():
    clock = Clock()
    policy = RetryPolicy(attempts=6, initial_backoff=0.1, multiplier=2.0, max_backoff=0.5, jitter=0.0)
    fn, calls = failing(grpc.StatusCode.UNAVAILABLE, times=100)
    with pytest.raises(ServiceError) as e:
        policy.run(fn, sleep=clock.sleep, clock=lambda: clock.now)
    assert e.value.code == grpc.StatusCode.UNAVAILABLE and len(calls) == 6
    assert clock.sleeps == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])


def test_backoff_retries_until_the_call_succeeds_and_jitter_stays_in_its_band():
    clock = Clock()
    policy = RetryPolicy(attempts=10, initial_backoff=1.0, multiplier=1.0, jitter=0.2)
    fn, calls = failing(grpc.StatusCode.UNAVAILABLE, times=3)
    assert policy.run(fn, sleep=clock.sleep, clock=lambda: clock.now) == 42 and len(calls) == 4
    assert len(clock.sleeps) == 3 and all(0.8 <= s <= 1.2 for s in clock.sleeps)


def test_only_unavailable_is_retried_and_the_deadline_bounds_the_wait():
    clock = Clock()
    for code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                 grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED):
        fn, calls = failing(code, times=1)
        with pytest.raises(ServiceError):
            RetryPolicy().run(fn, sleep=clock.sleep, clock=lambda: clock.now)
        assert len(calls) == 1, code
    assert clock.sleeps == []
    policy = RetryPolicy(attempts=1000, initial_backoff=1.0, multiplier=1.0, jitter=0.0, deadline=3.5)
    fn, calls = failing(grpc.StatusCode.UNAVAILABLE, times=1000)
    with pytest.raises(ServiceError):
        policy.run(fn, sleep=clock.sleep, clock=lambda: clock.now)
    assert sum(clock.sleeps) <= 3.5 and len(calls) == 4


def test_a_call_waits_with_backoff_for_a_server_that_comes_up_later(small_stream):
    port = free_port()
    started = []
    starter = threading.Timer(1.0, lambda: started.append(start_service(port=port)))
    starter.start()
    try:
        with Client(f"127.0.0.1:{port}", timeout=5) as client:
            t0 = time.monotonic()
            status = client.status(retry=RetryPolicy(attempts=200, initial_backoff=0.05, max_backoff=0.5, deadline=60))
            assert time.monotonic() - t0 >= 0.9 and not status.has_model
    finally:
        starter.join()
        for s in started:
            s.stop(grace=0.5)


def test_no_retry_means_one_try():
    with Client(f"127.0.0.1:{free_port()}", timeout=5) as client:
        t0 = time.monotonic()
        with pytest.raises(ServiceError) as e:
            client.status(retry=None)
        assert e.value.code == grpc.StatusCode.UNAVAILABLE and e.value.method == "GetStatus"
        assert time.monotonic() - t0 < 5
        assert client.health() == "UNAVAILABLE"


# -- every call --------------------------------------------------------------------------------------

def test_every_call_through_the_library(service, small_stream):
    s = service()
    stream = small_stream
    with Client(target(s)) as client:
        client.wait_until_serving(timeout=30)
        test = stream.buckets[0].test
        x_test, y_test = test.batch(torch.arange(len(test)))
        reg = client.register_eval_set(0, x_test, y_test, schema=schema_of(stream), chunk_size=100)
        assert reg.num_samples == len(test) and reg.registered_buckets == [0] and not reg.already_registered
        assert client.register_eval_set(0, x_test, y_test).already_registered  # safe to send again
        test1 = stream.buckets[1].test  # a set too big to hold at once goes as pieces, made on demand
        pieces = lambda: (test1.batch(torch.arange(i, min(i + 200, len(test1)))) for i in range(0, len(test1), 200))
        assert client.register_eval_set(1, chunks=pieces).registered_buckets == [0, 1]
        with pytest.raises(ValueError):
            client.register_eval_set(2, x_test)
        acks = list(client.train(batches(stream, 0), schema=schema_of(stream)))
        assert [a.sequence for a in acks] == list(range(1, 21)) and all(a.applied for a in acks)
        assert acks[-1].samples_trained == 200 and acks[-1].model_version == 20
        again = list(client.train(batches(stream, 0, limit=3)))
        assert all(a.duplicate and not a.applied and np.isnan(a.accuracy) for a in again)
        end = client.end_bucket(0, bucket_size=200)
        assert end.bucket == 0 and end.open_bucket == 1 and len(end.row) == 2 and not end.already_ended
        assert set(end.metrics) >= {"acc", "bwt", "fwt", "clear_score"}
        assert client.end_bucket(0).already_ended
        answer = client.predict(x_test[:5], top_k=3)
        assert len(answer.predictions) == 5 and answer.model_version == 20 and answer.latency_seconds > 0
        p = answer.predictions[0]
        assert p.label == p.top_labels[0] and p.class_name == str(p.label) and len(p.top_probabilities) == 3
        assert answer.labels == [q.label for q in answer.predictions]
        evaluated = client.evaluate(x_test, y_test, chunk_size=128)
        assert evaluated.total == len(test) and evaluated.accuracy == pytest.approx(end.row[0], abs=1e-12)
        status = client.status()
        assert status.has_model and status.samples_trained == 200 and status.applied_sequences == {"s": 20}
        assert status.open_bucket == 1 and status.eval_buckets == [0, 1] and status.config["strategy"] == "replay"
        assert status.schema == {"class_names": stream.class_names, "input_shape": list(stream.input_shape)}
        assert np.isfinite(status.accuracy_matrix).all() and len(status.initial_accuracy) == 2


def test_server_refusals_are_service_errors_that_name_the_problem(service, small_stream):
    s = service()
    with Client(target(s)) as client:
        with pytest.raises(ServiceError) as e:  # no model yet
            client.predict(np.zeros((1, 1, 8, 8), dtype=np.float32), retry=None)
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
        list(client.train(batches(small_stream, 0, limit=1), schema=schema_of(small_stream)))
        with pytest.raises(ServiceError) as e:  # a bucket out of order
            list(client.train(batches(small_stream, 1, first_sequence=2, limit=2)))
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION and "bucket" in e.value.details
        with pytest.raises(ServiceError) as e:  # wrong shape
            client.predict(np.zeros((2, 3, 8, 8), dtype=np.float32))
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "shape" in e.value.details
        assert client.status().samples_trained == 10  # nothing of the refused calls was applied


def test_an_error_in_the_batch_source_ends_the_stream_and_is_raised_unchanged(service, small_stream):
    s = service()

    def source():
        yield from batches(small_stream, 0, limit=2)
        raise OSError("disk gone")

    acks = []
    with Client(target(s)) as client:
        with pytest.raises(OSError, match="disk gone"):
            for ack in client.train(source(), schema=schema_of(small_stream)):
                acks.append(ack)
        assert [a.sequence for a in acks] == [1, 2] and client.status().applied_sequences == {"s": 2}


def test_bearer_token_and_mutual_tls(service, pki, small_stream):
    s = service(tls_cert_file=pki / "server.pem", tls_key_file=pki / "server.key",
                tls_client_ca_file=pki / "ca.pem", auth_tokens=["s3cret"])
    tls = dict(root_certificates=(pki / "ca.pem").read_bytes(), certificate_chain=(pki / "client.pem").read_bytes(),
               private_key=(pki / "client.key").read_bytes(), server_name="localhost")
    with Client(target(s), token="s3cret", **tls) as client:
        assert client.health() == "SERVING"
        list(client.train(batches(small_stream, 0, limit=2), schema=schema_of(small_stream)))
        assert client.status().samples_trained == 20
    for token in (None, "wrong"):
        with Client(target(s), token=token, **tls) as client:
            with pytest.raises(ServiceError) as e:
                client.status()
            assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
    with Client(target(s), token="s3cret", root_certificates=tls["root_certificates"],
                server_name="localhost", retry=RetryPolicy(attempts=1)) as client:  # no client certificate
        with pytest.raises(ServiceError) as e:
            client.status(timeout=10)
        assert e.value.code == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(ValueError):
        Client(target(s), certificate_chain=b"x")


def test_a_call_past_its_deadline_is_deadline_exceeded_and_leaves_nothing_half_done(service, small_stream):
    """The server cannot answer before the rest of a client stream arrives; the stream stalls (an
    upload waiting on a slow disk), so the deadline, and nothing else, ends the call."""
    s = service()
    stalled = threading.Event()
    release = threading.Event()

    def stalling(pieces):
        yield from pieces
        stalled.set()
        release.wait(30)  # bounded: a missing deadline fails the test below instead of hanging it

    test = small_stream.buckets[0].test
    x_test, y_test = test.batch(torch.arange(len(test)))
    try:
        with Client(target(s), timeout=2.0) as client:  # the deadline for uploads and status calls
            with pytest.raises(ServiceError) as e:
                client.register_eval_set(0, schema=schema_of(small_stream),
                                         chunks=lambda: stalling([(x_test[:100], y_test[:100])]))
            assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and e.value.method == "RegisterEvalSet"
            assert stalled.is_set() and client.status().eval_buckets == []  # no half-registered set
            acked = []
            with pytest.raises(ServiceError) as e:  # a Train stream with a deadline, stalled after 3 batches
                for ack in client.train(stalling(batches(small_stream, 0, limit=3)), schema=schema_of(small_stream),
                                        timeout=2.0):
                    acked.append(ack.sequence)
            assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and e.value.method == "Train"
            # What arrived was applied once (a loaded machine may not have applied all 3 in time),
            # every ack received names an applied batch, and the stream resumes right after them.
            applied = client.status().applied_sequences.get("s", 0)
            assert applied <= 3 and acked == list(range(1, len(acked) + 1)) and len(acked) <= applied
            acks = list(client.train(batches(small_stream, 0)))
            assert [a.sequence for a in acks if a.applied] == list(range(applied + 1, 21))
    finally:
        release.set()
