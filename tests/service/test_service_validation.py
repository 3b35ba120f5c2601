"""Bad input over the wire: each gets its status code and a message naming the field; nothing of it
is applied, and the server keeps serving."""
from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clstream_proto import continual_learner_pb2 as pb
from clstream_proto import continual_learner_pb2_grpc as pb_grpc
from server.codec import encode_samples, encode_tensor
from server.service import Service
from service_helpers import base_settings, channel_to, eval_chunks, schema_of, train_batches
from test_service_codec import png_declaring

INVALID, PRECONDITION, EXHAUSTED = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                                    grpc.StatusCode.RESOURCE_EXHAUSTED)


@pytest.fixture(scope="module", params=[False, True], ids=["learner-thread", "learner-process"])
def live(stream, request):
    """A server that trained bucket 0 (ended) and two batches of bucket 1 (open), sequence at 17; its
    learner in a thread, or in a process of its own."""
    service = Service(base_settings(max_message_bytes=256 * 1024, max_buckets=50, max_batch_samples=100,
                                    learner_process=request.param)).start()
    channel = channel_to(service)
    stub = pb_grpc.ContinualLearnerStub(channel)
    stub.RegisterEvalSet(eval_chunks(stream, 0, chunk=100))
    list(stub.Train(train_batches(stream, 0)))
    stub.EndBucket(pb.EndBucketRequest(bucket=0))
    list(stub.Train(train_batches(stream, 1, first_sequence=16, limit=2)))
    yield service, stub, channel
    channel.close()
    service.stop(grace=0.5)


def good(stream, sequence=100, bucket=1, **changes) -> pb.TrainBatch:
    x, y = stream.buckets[1].train.batch(torch.arange(10))
    batch = pb.TrainBatch(stream_id="s", sequence=sequence, bucket=bucket, samples=encode_samples(x),
                          labels=y.tolist())
    for key, value in changes.items():
        if key == "samples":
            batch.samples.CopyFrom(value)
        elif key == "labels":
            del batch.labels[:]
            batch.labels.extend(value)
        elif key == "schema":
            batch.schema.CopyFrom(value)
        elif key == "sample_ids":
            batch.sample_ids.extend(value)
        else:
            setattr(batch, key, value)
    return batch


def tensor_with(x: torch.Tensor, **fields) -> pb.Samples:
    t = encode_tensor(x)
    for key, value in fields.items():
        if key == "shape":
            del t.shape[:]
            t.shape.extend(value)
        else:
            setattr(t, key, value)
    return pb.Samples(tensor=t)


def nan_samples():
    x = torch.zeros(10, 1, 8, 8)
    x[3, 0, 0, 0] = float("nan")
    return encode_samples(x)


def inf_samples():
    x = torch.zeros(10, 1, 8, 8)
    x[0, 0, 5, 5] = float("inf")
    return encode_samples(x)


Z = torch.zeros(10, 1, 8, 8)
CASES = {
    "wrong shape": (dict(samples=tensor_with(torch.zeros(10, 1, 8, 7))), INVALID, "samples.tensor.shape"),
    "flat shape": (dict(samples=tensor_with(torch.zeros(10, 64))), INVALID, "expected [n, 1, 8, 8]"),
    "unset dtype": (dict(samples=tensor_with(Z, dtype=pb.DTYPE_UNSPECIFIED)), INVALID, "samples.tensor.dtype"),
    "unknown dtype": (dict(samples=tensor_with(Z, dtype=42)), INVALID, "samples.tensor.dtype"),
    "short data": (dict(samples=tensor_with(Z, data=b"\0" * 2559)), INVALID, "samples.tensor.data"),
    "huge declared shape": (dict(samples=tensor_with(Z, shape=[2**40, 1, 8, 8])), INVALID, "samples.tensor.shape[0]"),
    "NaN": (dict(samples=nan_samples()), INVALID, "NaN or Inf"),
    "Inf": (dict(samples=inf_samples()), INVALID, "NaN or Inf"),
    "label too large": (dict(labels=[10] * 10), INVALID, "labels: label 10 at position 0; expected 0..9"),
    "negative label": (dict(labels=[0] * 9 + [-3]), INVALID, "labels: label -3"),
    "label overflow": (dict(labels=[2**63 - 1] * 10), INVALID, "labels"),
    "too few labels": (dict(labels=[1] * 9), INVALID, "9 labels for 10 samples"),
    "too few sample ids": (dict(sample_ids=[1, 2, 3]), INVALID, "sample_ids: 3 ids for 10 samples; expected one per "
                                                                "sample, or none"),
    "undecodable image": (dict(samples=pb.Samples(images=pb.EncodedImages(images=[b"\xff\xd8garbage"] * 10))),
                          INVALID, "samples.images.images[0]"),
    "decompression bomb": (dict(samples=pb.Samples(images=pb.EncodedImages(images=[png_declaring(60000, 60000)]
                                                                           * 10))), INVALID, "pixels"),
    "empty batch": (dict(samples=tensor_with(torch.zeros(0, 1, 8, 8)), labels=[]), INVALID, "empty batch"),
    "no samples": (dict(samples=pb.Samples()), INVALID, "samples: not set"),
    "too many samples": (dict(samples=encode_samples(torch.zeros(101, 1, 8, 8)), labels=[0] * 101), INVALID,
                         "at most 100"),
    "bucket going backwards": (dict(bucket=0), PRECONDITION, "bucket 0 is already finished"),
    "bucket ahead": (dict(bucket=2), PRECONDITION, "end bucket 1 first"),
    "bucket past the limit": (dict(bucket=50), INVALID, "bucket: got 50; expected 0..49"),
    "empty stream id": (dict(stream_id=""), INVALID, "stream_id"),
    "long stream id": (dict(stream_id="x" * 10_000), INVALID, "expected 1..128 printable ASCII"),
    "control characters in stream id": (dict(stream_id="a\nb"), INVALID, "stream_id"),
    "sequence zero": (dict(sequence=0), INVALID, "sequence: got 0"),
    "schema mismatch": (dict(schema=pb.Schema(class_names=list("abcdefghij"), input_shape=[1, 8, 8])), PRECONDITION,
                        "schema mismatch"),
    "bad schema": (dict(schema=pb.Schema(class_names=["only"], input_shape=[1, 8, 8])), INVALID,
                   "schema.class_names"),
    "oversize message": (dict(samples=encode_samples(torch.zeros(100, 3, 16, 16))), EXHAUSTED, ""),
}


def state(stub) -> tuple:
    s = stub.GetStatus(pb.GetStatusRequest())
    return (s.model_version, s.samples_trained, s.open_bucket, dict(s.applied_sequences), s.buffer.size,
            [list(r.accuracy) for r in s.accuracy_matrix], list(s.eval_buckets), s.serving_version)


def assert_still_serves(stub, channel, stream, before: tuple) -> None:
    """Nothing changed since `before`, health is SERVING and a valid prediction answers."""
    assert state(stub) == before
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert stub.Predict(pb.PredictRequest(samples=good(stream).samples)).model_version == before[0]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_training_input_is_refused_and_changes_nothing(live, stream, case):
    service, stub, channel = live
    changes, code, words = CASES[case]
    before = state(stub)
    valid_first = good(stream, sequence=before[3]["s"] + 1)
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Train(iter([good(stream, **{"sequence": before[3]["s"] + 1, **changes})])))
    assert e.value.code() == code, e.value.details()
    assert words in e.value.details()
    assert "Traceback" not in e.value.details()
    assert_still_serves(stub, channel, stream, before)  # and a valid batch still trains:
    ack = next(iter(stub.Train(iter([valid_first]))))
    assert ack.applied and ack.model_version == before[0] + 1


def test_a_rejected_batch_ends_its_stream_and_nothing_after_it_is_applied(live, stream):
    _, stub, _ = live
    mark = state(stub)[3]["s"]
    batches = [good(stream, mark + 1), good(stream, mark + 2), good(stream, mark + 3, labels=[99] * 10),
               good(stream, mark + 4), good(stream, mark + 5)]
    acks = []
    with pytest.raises(grpc.RpcError) as e:
        for ack in stub.Train(iter(batches)):
            acks.append(ack)
    assert e.value.code() == INVALID and [a.sequence for a in acks] == [mark + 1, mark + 2]
    assert state(stub)[3]["s"] == mark + 2


BAD_SAMPLES = {  # what Predict and Evaluate refuse alike: samples → words in the message
    "wrong shape": (encode_samples(torch.zeros(10, 3, 8, 8)), "samples.tensor.shape"),
    "NaN": (nan_samples(), "NaN or Inf"),
    "undecodable image": (pb.Samples(images=pb.EncodedImages(images=[b"\xff\xd8garbage"] * 10)),
                          "samples.images.images[0]: not a JPEG or PNG file (it starts with b'\\xff\\xd8garbag')"),
    "too many bytes": (tensor_with(Z, data=b"\0" * 2561), "samples.tensor.data: 2561 bytes; expected 2560"),
}


@pytest.mark.parametrize("request_,words", [
    (pb.PredictRequest(), "samples: not set"),
    (pb.PredictRequest(samples=encode_samples(torch.zeros(2, 1, 8, 8)), top_k=11), "top_k: got 11"),
    *[(pb.PredictRequest(samples=samples), words) for samples, words in BAD_SAMPLES.values()],
], ids=["unset", "top_k", *BAD_SAMPLES])
def test_bad_predictions_are_refused_and_change_nothing(live, stream, request_, words):
    _, stub, channel = live
    before = state(stub)
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(request_)
    assert e.value.code() == INVALID and words in e.value.details() and "Traceback" not in e.value.details()
    assert_still_serves(stub, channel, stream, before)


@pytest.mark.parametrize("case", list(BAD_SAMPLES))
def test_bad_evaluations_are_refused_and_change_nothing(live, stream, case):
    _, stub, channel = live
    samples, words = BAD_SAMPLES[case]
    before = state(stub)
    fine = pb.EvaluateChunk(samples=good(stream).samples, labels=good(stream).labels)
    with pytest.raises(grpc.RpcError) as e:
        stub.Evaluate(iter([fine, pb.EvaluateChunk(samples=samples, labels=[0] * 10)]))
    assert e.value.code() == INVALID and words in e.value.details() and "Traceback" not in e.value.details()
    assert_still_serves(stub, channel, stream, before)
    assert stub.Evaluate(iter([fine])).total == 10


def test_bad_eval_sets_and_evaluations_are_refused(live, stream):
    _, stub, channel = live
    before = state(stub)
    chunks = list(eval_chunks(stream, 1, chunk=100))
    chunks[2].bucket = 2
    for sent, code, words in [
        (chunks, INVALID, "chunk 2: bucket: got 2; expected 1"),
        ([], INVALID, "no chunk"),
        ([pb.EvalSetChunk(bucket=1, samples=chunks[0].samples, labels=[12] * 100)], INVALID, "labels"),
        ([pb.EvalSetChunk(bucket=999, samples=chunks[0].samples, labels=chunks[0].labels)], INVALID, "bucket"),
    ]:
        with pytest.raises(grpc.RpcError) as e:
            stub.RegisterEvalSet(iter(sent))
        assert e.value.code() == code and words in e.value.details()
        assert_still_serves(stub, channel, stream, before)
    with pytest.raises(grpc.RpcError) as e:
        stub.Evaluate(iter([]))
    assert e.value.code() == INVALID and "no samples" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        stub.Evaluate(iter([pb.EvaluateChunk(samples=chunks[0].samples, labels=[1])]))
    assert e.value.code() == INVALID and "1 labels for 100 samples" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        stub.EndBucket(pb.EndBucketRequest(bucket=10**6))
    assert e.value.code() == INVALID
    assert_still_serves(stub, channel, stream, before)


def test_no_schema_yet_is_a_failed_precondition(start, connect, stream):
    stub = connect(start())
    x = stream.buckets[0].train.batch(torch.arange(4))[0]
    for call in (lambda: stub.Predict(pb.PredictRequest(samples=encode_samples(x))),
                 lambda: list(stub.Train(iter([pb.TrainBatch(stream_id="s", sequence=1, samples=encode_samples(x),
                                                             labels=[0, 1, 2, 3])]))),
                 lambda: stub.EndBucket(pb.EndBucketRequest(bucket=0))):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == PRECONDITION and ("schema" in e.value.details() or "no model" in e.value.details())
    status = stub.GetStatus(pb.GetStatusRequest())
    assert not status.has_model and not status.HasField("schema") and np.isnan(status.metrics.acc)
    # A rejected first batch does not establish its schema either.
    bad = pb.TrainBatch(stream_id="s", sequence=1, samples=encode_samples(x), labels=[0, 1, 2, 99],
                        schema=schema_of(stream))
    with pytest.raises(grpc.RpcError):
        list(stub.Train(iter([bad])))
    assert not stub.GetStatus(pb.GetStatusRequest()).HasField("schema")


def test_a_first_batch_refused_by_the_worker_leaves_no_model_and_no_schema(start, connect, stream):
    """The worker refuses a first batch for bucket 1 (FAILED_PRECONDITION): its schema is not fixed, no
    model is built or served, and a right first batch, even of another schema, is then accepted."""
    stub = connect(start())
    wrong = next(train_batches(stream, 0, limit=1))
    wrong.bucket = 1
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Train(iter([wrong])))
    assert e.value.code() == PRECONDITION and "end bucket 0 first" in e.value.details()
    status = stub.GetStatus(pb.GetStatusRequest())
    assert not status.has_model and not status.HasField("schema") and status.serving_version == 0
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(pb.PredictRequest(samples=wrong.samples))
    assert e.value.code() == PRECONDITION
    other = pb.Schema(class_names=[f"c{k}" for k in range(12)], input_shape=[1, 8, 8])
    first = pb.TrainBatch(stream_id="s", sequence=1, bucket=0, samples=wrong.samples, labels=wrong.labels,
                          schema=other)
    second = pb.TrainBatch(stream_id="s", sequence=2, bucket=0, samples=wrong.samples, labels=wrong.labels)
    assert [a.model_version for a in stub.Train(iter([first, second]))] == [1, 2]  # the second omits the schema
    status = stub.GetStatus(pb.GetStatusRequest())
    assert status.has_model and list(status.schema.class_names) == list(other.class_names)
    assert len(stub.Predict(pb.PredictRequest(samples=wrong.samples, top_k=12)).predictions[0].top_labels) == 12
