"""Prediction replicas (`--follow`), through real servers on loopback: a learner and replicas that
follow its published versions over WatchModel, serve Predict from them and refuse training."""
from __future__ import annotations

import time

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client.api import Client, lb_policy
from client.cli import main as cli_main
from clstream_proto import continual_learner_pb2 as pb
from server.codec import encode_samples
from service_helpers import base_settings, channel_to, eval_chunks, train_batches, train_buckets
from test_service_observability import scrape, value
from test_service_security import OVERRIDE, TOKEN, creds, pki  # noqa: F401 (pki: a fixture)

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def replica_of(start, learner, **overrides):
    return start(follow=f"127.0.0.1:{learner.port}", **overrides)


def wait_for_version(stub, version: int, timeout: float = 60.0) -> pb.Status:
    """The replica's status once it serves `version` (fails the test past `timeout`: a replica stuck)."""
    deadline = time.monotonic() + timeout
    while True:
        status = stub.GetStatus(pb.GetStatusRequest(), timeout=10)
        if status.serving_version == version:
            return status
        assert time.monotonic() < deadline, f"replica serves {status.serving_version}, never reached {version}"
        time.sleep(0.1)


def health_of(service, name: str = "") -> int:
    with channel_to(service) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status


def predict(stub, stream, bucket: int = 0, count: int = 64) -> pb.PredictResponse:
    x, _ = stream.buckets[bucket].test.batch(torch.arange(count))
    return stub.Predict(pb.PredictRequest(samples=encode_samples(x), top_k=3), timeout=10)


def test_two_replicas_reach_the_learners_version_and_answer_the_same_labels(start, connect, stream):
    learner = start()
    replicas = [replica_of(start, learner), replica_of(start, learner)]
    assert [health_of(r) for r in replicas] == [NOT_SERVING, NOT_SERVING]  # no model anywhere yet
    with pytest.raises(grpc.RpcError) as e:
        predict(connect(replicas[0]), stream)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    stub = connect(learner)
    train_buckets(stub, stream, 2)
    version = stub.GetStatus(pb.GetStatusRequest()).serving_version
    assert version > 0
    expected = predict(stub, stream)
    for replica in replicas:
        status = wait_for_version(connect(replica), version)
        assert status.has_model and list(status.schema.class_names) == list(stream.class_names)
        assert status.model_version == version  # the learner's newest, as the replica knows it
        answer = predict(connect(replica), stream)
        assert answer.model_version == version
        assert [p.top_labels for p in answer.predictions] == [p.top_labels for p in expected.predictions]
        assert [v for p in answer.predictions for v in p.top_probabilities] == pytest.approx(
            [v for p in expected.predictions for v in p.top_probabilities], abs=1e-6)
        assert health_of(replica) == SERVING
        assert health_of(replica, "clstream.v1.Training") == NOT_SERVING  # it trains nothing
        evaluated = connect(replica).Evaluate(
            pb.EvaluateChunk(samples=c.samples, labels=c.labels) for c in eval_chunks(stream, 0))
        assert evaluated.model_version == version and evaluated.total == len(stream.buckets[0].test)


def test_a_replica_refuses_training_and_admin_calls_naming_the_learner(start, connect, stream):
    learner = start()
    replica = connect(replica_of(start, learner))
    calls = {
        "Train": lambda: list(replica.Train(train_batches(stream, 0, limit=1), timeout=10)),
        "EndBucket": lambda: replica.EndBucket(pb.EndBucketRequest(bucket=0), timeout=10),
        "RegisterEvalSet": lambda: replica.RegisterEvalSet(eval_chunks(stream, 0), timeout=10),
        "ForgetStream": lambda: replica.ForgetStream(pb.ForgetStreamRequest(stream_id="s"), timeout=10),
        "WatchModel": lambda: next(replica.WatchModel(pb.WatchModelRequest(), timeout=10)),
    }
    for name, call in calls.items():
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION, name
        assert f"127.0.0.1:{learner.port}" in e.value.details() and name in e.value.details()
    assert connect(learner).GetStatus(pb.GetStatusRequest()).samples_trained == 0  # nothing reached the learner


def test_a_restarted_replica_catches_up(start, connect, stream):
    learner = start()
    stub = connect(learner)
    train_buckets(stub, stream, 1)
    first = replica_of(start, learner)
    wait_for_version(connect(first), stub.GetStatus(pb.GetStatusRequest()).serving_version)
    port = first.port
    first.stop(grace=0.5)
    acks = list(stub.Train(train_batches(stream, 1, first_sequence=100)))
    stub.EndBucket(pb.EndBucketRequest(bucket=1))
    version = stub.GetStatus(pb.GetStatusRequest()).serving_version
    assert version == acks[-1].model_version
    again = replica_of(start, learner, port=port)
    wait_for_version(connect(again), version)
    assert [p.label for p in predict(connect(again), stream, 1).predictions] == \
        [p.label for p in predict(stub, stream, 1).predictions]


def test_a_learner_restart_does_not_take_replicas_down(start, connect, stream, tmp_path):
    learner = start(checkpoint_dir=tmp_path)
    port = learner.port
    stub = connect(learner)
    train_buckets(stub, stream, 1)
    before = stub.GetStatus(pb.GetStatusRequest()).serving_version
    expected = [p.label for p in predict(stub, stream).predictions]
    replica = replica_of(start, learner)
    rstub = connect(replica)
    wait_for_version(rstub, before)

    learner.stop(grace=0.5)
    for _ in range(3):  # the learner is away: the replica keeps answering from its version
        answer = predict(rstub, stream)
        assert answer.model_version == before and [p.label for p in answer.predictions] == expected
        assert health_of(replica) == SERVING
        time.sleep(0.3)

    learner = start(checkpoint_dir=tmp_path, port=port)  # resumes from its checkpoint, same address
    stub = connect(learner)
    list(stub.Train(train_batches(stream, 1, first_sequence=1000)))
    stub.EndBucket(pb.EndBucketRequest(bucket=1))
    after = stub.GetStatus(pb.GetStatusRequest()).serving_version
    assert after > before
    wait_for_version(rstub, after)
    assert [p.label for p in predict(rstub, stream, 1).predictions] == \
        [p.label for p in predict(stub, stream, 1).predictions]


def test_replica_lag_metrics_carry_data(start, connect, stream):
    learner = start()
    stub = connect(learner)
    train_buckets(stub, stream, 1)
    version = stub.GetStatus(pb.GetStatusRequest()).serving_version
    replica = replica_of(start, learner)
    wait_for_version(connect(replica), version)
    families = scrape(replica)
    assert value(families, "clstream_replica_serving_version") == version
    assert "clstream_samples_trained" not in families  # the learner's metrics stay the learner's
    assert value(families, "clstream_replica_learner_version") == version
    assert value(families, "clstream_replica_lag_versions") == 0
    assert value(families, "clstream_replica_lag_seconds") == 0
    assert value(families, "clstream_replica_connected") == 1
    assert value(families, "clstream_replica_updates", "_total") >= 1

    # A replica that cannot take the learner's versions (its settings fix another schema) serves
    # nothing, and its lag says how far behind it is and since when.
    names = [f"other{i}" for i in range(len(stream.class_names))]
    stuck = replica_of(start, learner, class_names=names, input_shape=list(stream.input_shape))
    deadline = time.monotonic() + 60
    while value(scrape(stuck), "clstream_replica_learner_version") != version:
        assert time.monotonic() < deadline, "the stuck replica never heard of the learner's version"
        time.sleep(0.1)
    time.sleep(0.2)
    families = scrape(stuck)
    assert value(families, "clstream_replica_lag_versions") == version
    assert value(families, "clstream_replica_lag_seconds") > 0
    assert health_of(stuck) == NOT_SERVING


def test_watch_model_chunks_a_version_and_coalesces_for_a_slow_watcher(start, connect, stream):
    """A learner whose messages are at most 16 KiB sends the ~70 KB model in several chunks; a watcher
    that reads nothing while 15 versions are published gets the newest one, not a queue of them."""
    learner = start(max_message_bytes=16 * 1024)
    stub = connect(learner)
    list(stub.Train(train_batches(stream, 0, limit=1)))
    slow = connect(learner, **{"grpc.http2.bdp_probe": 0})  # flow control stays at its 64 KiB window
    watch = slow.WatchModel(pb.WatchModelRequest(), timeout=60)
    first = next(watch)
    assert first.offset == 0 and first.model == "mlp" and first.total_bytes > 16 * 1024
    assert list(first.schema.class_names) == list(stream.class_names)
    acks = list(stub.Train(train_batches(stream, 0, first_sequence=2, limit=15)))  # 15 versions, unread
    newest = acks[-1].model_version
    versions, chunk = set(), first
    while True:
        assert chunk.ByteSize() <= 16 * 1024
        versions.add(chunk.model_version)
        if chunk.model_version == newest and chunk.offset + len(chunk.weights) == chunk.total_bytes:
            break
        chunk = next(watch)
    assert chunk.latest_version == newest
    assert len(versions) < 10  # skipped versions: coalesced, not queued
    watch.cancel()

    # A watcher that already has the current version gets nothing until a newer one is published.
    again = connect(learner).WatchModel(pb.WatchModelRequest(have_learner_id=first.learner_id, have_version=newest),
                                        timeout=60)
    list(stub.Train(train_batches(stream, 0, first_sequence=100, limit=1)))
    assert next(again).model_version == newest + 1
    again.cancel()


def test_a_replica_connects_to_the_learner_with_tls_and_its_token(start, connect, stream, pki):
    learner = start(tls_cert_file=pki / "server.pem", tls_key_file=pki / "server.key",
                    tls_client_ca_file=pki / "ca.pem", auth_tokens=[TOKEN])
    tls = dict(follow_ca_file=pki / "ca.pem", follow_cert_file=pki / "client.pem", follow_key_file=pki / "client.key")
    replica = replica_of(start, learner, follow_token=TOKEN, **tls)
    tokenless = replica_of(start, learner, **tls)
    stub = connect(learner, creds(pki, client="client"), **OVERRIDE)
    md = (("authorization", f"Bearer {TOKEN}"),)
    acks = list(stub.Train(train_batches(stream, 0, limit=3), metadata=md, timeout=30))
    wait_for_version(connect(replica), acks[-1].model_version)
    assert connect(tokenless).GetStatus(pb.GetStatusRequest()).serving_version == 0  # refused by the learner's auth
    assert health_of(tokenless) == NOT_SERVING


@pytest.mark.parametrize("settings, named", [
    (dict(follow="127.0.0.1:1", checkpoint_dir="ckpt"), "checkpoint_dir"),
    (dict(follow="127.0.0.1:1", learner_process=True), "learner_process"),
    (dict(follow=" "), "follow is empty"),
    (dict(follow_token="t"), "--follow"),
    (dict(follow="127.0.0.1:1", follow_cert_file="c.pem"), "follow_key_file"),
])
def test_replica_settings_that_cannot_work_are_refused_naming_the_setting(settings, named):
    with pytest.raises(ValueError) as e:
        base_settings(**settings)
    assert named in str(e.value)


def test_clients_spread_predict_over_replicas_with_round_robin(start, connect, stream):
    learner = start()
    stub = connect(learner)
    train_buckets(stub, stream, 1)
    version = stub.GetStatus(pb.GetStatusRequest()).serving_version
    replicas = [replica_of(start, learner), replica_of(start, learner)]
    for replica in replicas:
        wait_for_version(connect(replica), version)
    target = "ipv4:" + ",".join(f"127.0.0.1:{r.port}" for r in replicas)
    assert lb_policy(target) == "round_robin" and lb_policy("127.0.0.1:1") == "pick_first"
    x, _ = stream.buckets[0].test.batch(torch.arange(8))
    with Client(target) as client:  # round_robin: the target lists several addresses
        answers = [client.predict(x) for _ in range(20)]
    assert {a.model_version for a in answers} == {version}
    served = [value(scrape(r), "clstream_predict_requests", "_total", code="OK") for r in replicas]
    assert sum(served) == 20 and min(served) >= 5  # both replicas answered a share
    with Client(target, lb="pick_first") as client:  # asked for: one address takes every call
        for _ in range(10):
            client.predict(x)
    after = [value(scrape(r), "clstream_predict_requests", "_total", code="OK") for r in replicas]
    assert sorted(a - s for a, s in zip(after, served)) == [0, 10]
    with pytest.raises(ValueError, match="round_robin"):
        Client(target, lb="random")
    assert cli_main(["status", "--target", target, "--lb", "round_robin"]) == 0  # the CLI takes the same target
    with pytest.raises(SystemExit) as e:
        cli_main(["status", "--target", target, "--lb", "random"])
    assert e.value.code == 2


def test_a_replica_follows_a_learner_that_trains_in_its_own_process(start, connect, stream):
    """--learner-process publishes through the server process's snapshots: replicas see those too."""
    learner = start(learner_process=True)
    stub = connect(learner)
    acks = list(stub.Train(train_batches(stream, 0, limit=3), timeout=120))
    replica = replica_of(start, learner)
    wait_for_version(connect(replica), acks[-1].model_version)
    assert [p.label for p in predict(connect(replica), stream).predictions] == \
        [p.label for p in predict(stub, stream).predictions]
