"""Hostile input, fuzzed with hypothesis, against ONE real in-process server (server.service.Service).

Every generated TrainBatch / EvalSetChunk / EndBucket carries at least one defect (random shapes,
dtypes and byte lengths, NaN/Inf, declared dimensions that would allocate gigabytes, int64 label
extremes, random image bytes, PNG/JPEG headers declaring 50000×50000, stream ids up to 1 MB,
messages over the size limit, buckets out of order, duplicate sequences in any order). Each must be
answered INVALID_ARGUMENT / FAILED_PRECONDITION / RESOURCE_EXHAUSTED (never UNKNOWN or INTERNAL),
health stays SERVING, and the model is unchanged: GetStatus's versions, counters, marks and
registered sets, and a Predict on fixed data, bit for bit. Predict requests may also be valid
(answered OK). A server with no schema yet is sent first batches declaring any shape and class count:
refused by name or taken, never INTERNAL. Examples: 30 per test, 300 with CLSTREAM_LONG_TESTS=1."""
from __future__ import annotations

import struct

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clstream_proto import continual_learner_pb2 as pb
from clstream_proto import continual_learner_pb2_grpc as pb_grpc
from reliability_support import LONG
from server.codec import encode_samples
from server.service import Service
from service_helpers import base_settings, channel_to, eval_chunks, schema_of, train_batches
from test_service_codec import png_bytes, png_declaring

REFUSED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED}
MAX_MESSAGE = 2 * 1024 * 1024  # the server's message limit here: a 1 MB stream id fits, 3 MB does not
MAX_BUCKETS = 50
FUZZ = settings(max_examples=300 if LONG else 30, deadline=None, database=None, derandomize=not LONG,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
INT64 = st.one_of(st.sampled_from([-(2**63), 2**63 - 1, -1, 10, 11, 2**31, -(2**31)]),
                  st.integers(-(2**63), 2**63 - 1).filter(lambda v: not 0 <= v < 10))


def jpeg_declaring(width: int, height: int) -> bytes:
    """A JPEG's markers up to the scan, declaring width × height RGB pixels, with no image data."""
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"".join(bytes([i, 0x11, 0]) for i in (1, 2, 3))
    dqt = b"\x00" + bytes(range(1, 65))
    sos = struct.pack(">B", 3) + b"".join(bytes([i, 0]) for i in (1, 2, 3)) + b"\x00\x3f\x00"

    def seg(marker: int, body: bytes) -> bytes:
        return struct.pack(">BBH", 0xFF, marker, len(body) + 2) + body
    return b"\xff\xd8" + seg(0xDB, dqt) + seg(0xC0, sof) + seg(0xDA, sos) + b"\x00" * 64 + b"\xff\xd9"


class Live:
    """The server after one bucket ended and 5 batches of bucket 1: a model with a history to keep."""

    def __init__(self, stream):
        self.stream = stream
        self.service = Service(base_settings(max_message_bytes=MAX_MESSAGE, max_buckets=MAX_BUCKETS,
                                             max_batch_samples=100, max_eval_samples=600,
                                             max_image_pixels=64 * 64)).start()
        self.channel = channel_to(self.service)
        self.stub = pb_grpc.ContinualLearnerStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.stub.RegisterEvalSet(eval_chunks(stream, 0, chunk=100))
        list(self.stub.Train(train_batches(stream, 0, stream_id="warm")))
        self.stub.EndBucket(pb.EndBucketRequest(bucket=0))
        list(self.stub.Train(train_batches(stream, 1, first_sequence=21, stream_id="warm", limit=5)))
        self.mark = 25
        x, self.y = stream.buckets[1].train.batch(torch.arange(10))
        self.x = x
        self.probe = pb.PredictRequest(samples=encode_samples(stream.buckets[2].test.batch(torch.arange(32))[0]),
                                       top_k=3)
        self.before = self.state()
        self.codes: dict[str, dict[str, int]] = {}

    def state(self):
        s = self.stub.GetStatus(pb.GetStatusRequest())
        p = self.stub.Predict(self.probe)
        return (s.model_version, s.serving_version, s.samples_trained, s.batches_trained, s.open_bucket,
                dict(s.applied_sequences), tuple(s.eval_buckets), s.buffer.size,
                tuple(tuple(q.top_probabilities) for q in p.predictions), p.model_version)

    def check(self, method: str, call, allow_ok: bool = False) -> None:
        try:
            call()
            code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            code = e.code()
            assert code in REFUSED, f"{method}: {code.name}: {e.details()}"
            assert "Traceback" not in (e.details() or "")
        assert allow_ok or code != grpc.StatusCode.OK, f"{method}: a defective request was accepted"
        counts = self.codes.setdefault(method, {})
        counts[code.name] = counts.get(code.name, 0) + 1
        health = self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert self.state() == self.before, f"{method}: a refused request changed the model"

    def close(self):
        self.channel.close()
        self.service.stop(grace=0.5)


@pytest.fixture(scope="module")
def live(small_stream, figures_dir):
    server = Live(small_stream)
    yield server
    import json
    (figures_dir / "fuzz.json").write_text(json.dumps({"codes": server.codes}, indent=2))
    print(f"\n[reliability] fuzz: status codes per method {server.codes}")
    server.close()


# -- samples: every kind of broken payload (the schema is [1, 8, 8], 10 classes) -------------------

@st.composite
def tensors(draw, n: int) -> pb.Samples:
    kind = draw(st.sampled_from(["shape", "huge", "dtype", "length", "nonfinite"]))
    base = np.random.default_rng(draw(st.integers(0, 2**16))).random((n, 1, 8, 8), dtype=np.float32)
    t = pb.Tensor(shape=[n, 1, 8, 8], dtype=pb.DTYPE_FLOAT32, data=base.tobytes())
    if kind == "shape":
        shape = draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=9).filter(lambda s: s[1:] != [1, 8, 8]))
        t.ClearField("shape")
        t.shape.extend(shape)
    elif kind == "huge":  # declared sizes that would allocate gigabytes if trusted
        t.ClearField("shape")
        t.shape.extend(draw(st.sampled_from([[2**40, 1, 8, 8], [2**62, 1, 8, 8], [101, 1, 8, 8], [0, 1, 8, 8],
                                             [-5, 1, 8, 8], [n, 1, 2**31, 2**31], [n, 2**20, 8, 8]])))
    elif kind == "dtype":
        t.dtype = draw(st.one_of(st.just(pb.DTYPE_UNSPECIFIED), st.integers(4, 2**31 - 1), st.integers(-(2**31), -1)))
    elif kind == "length":
        size = draw(st.integers(0, 4 * 64 * n + 64).filter(lambda k: k != 4 * 64 * n))
        t.data = draw(st.binary(min_size=size, max_size=size)) if size < 4096 else bytes(size)
    else:
        dtype = draw(st.sampled_from([pb.DTYPE_FLOAT32, pb.DTYPE_FLOAT16]))
        values = base.astype(np.float16 if dtype == pb.DTYPE_FLOAT16 else np.float32)
        values.reshape(-1)[draw(st.integers(0, values.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        t.dtype, t.data = dtype, values.tobytes()
    return pb.Samples(tensor=t)


@st.composite
def images(draw, n: int) -> pb.Samples:
    kind = draw(st.sampled_from(["random", "png_bomb", "jpeg_bomb", "too_many_pixels", "truncated", "empty"]))
    make = {
        "random": lambda: draw(st.binary(min_size=1, max_size=2048)),
        "png_bomb": lambda: png_declaring(draw(st.sampled_from([50000, 65535, 2**31 - 1])), 50000),
        "jpeg_bomb": lambda: jpeg_declaring(50000, draw(st.sampled_from([50000, 65535]))),
        "too_many_pixels": lambda: png_bytes(np.zeros((65, 64), np.uint8)),  # a real image over the 64×64 limit
        "truncated": lambda: png_bytes(np.zeros((8, 8), np.uint8))[: draw(st.integers(1, 40))],
        "empty": lambda: b"",
    }[kind]
    good = png_bytes(np.zeros((8, 8), np.uint8))
    bad_at = draw(st.integers(0, n - 1))
    return pb.Samples(images=pb.EncodedImages(images=[make() if i == bad_at else good for i in range(n)]))


def bad_samples(n: int):
    return st.one_of(tensors(n), images(n), st.just(pb.Samples()))


@st.composite
def bad_train_batches(draw, live) -> pb.TrainBatch:
    n = draw(st.integers(1, 10))
    batch = pb.TrainBatch(stream_id="fuzz", sequence=draw(st.integers(1, 2**64 - 1)), bucket=1,
                          samples=encode_samples(live.x[:n]), labels=live.y[:n].tolist())
    defects = draw(st.sets(st.sampled_from(["stream_id", "sequence", "bucket", "samples", "labels", "schema",
                                            "oversize"]), min_size=1, max_size=3))
    if "stream_id" in defects:
        batch.stream_id = draw(st.one_of(
            st.just(""), st.integers(129, 1 << 20).map(lambda k: "x" * k),
            st.text(min_size=1, max_size=20).filter(lambda s: not (s.isascii() and s.isprintable()))))
    if "sequence" in defects:
        batch.sequence = 0
    if "bucket" in defects:
        batch.bucket = draw(st.one_of(st.just(0), st.integers(2, MAX_BUCKETS - 1), st.integers(MAX_BUCKETS, 2**32 - 1)))
    if "samples" in defects:
        batch.samples.CopyFrom(draw(bad_samples(n)))
    if "labels" in defects:
        labels = draw(st.lists(st.integers(0, 9), min_size=0, max_size=12).filter(lambda v: len(v) != n)
                      | st.lists(INT64, min_size=n, max_size=n))
        batch.ClearField("labels")
        batch.labels.extend(labels)
    if "schema" in defects:
        batch.schema.CopyFrom(draw(st.one_of(
            st.builds(lambda k: pb.Schema(class_names=[str(i) for i in range(k)], input_shape=[1, 8, 8]),
                      st.integers(0, 30).filter(lambda k: k != 10)),
            st.builds(lambda s: pb.Schema(class_names=[str(i) for i in range(10)], input_shape=s),
                      st.lists(st.integers(-(2**63), 2**63 - 1), max_size=6).filter(lambda s: s != [1, 8, 8])))))
    if "oversize" in defects:  # a message over the server's limit: refused by gRPC itself
        batch.stream_id = "y" * (MAX_MESSAGE + 1024)
    return batch


def test_hostile_train_batches_are_refused_and_change_nothing(live):
    @FUZZ
    @given(batch=bad_train_batches(live))
    def run(batch):
        live.check("Train", lambda: list(live.stub.Train(iter([batch]), timeout=30)))
    run()


def test_duplicate_sequences_in_any_order_are_acknowledged_and_not_trained(live):
    @FUZZ
    @given(sequences=st.lists(st.integers(1, live.mark), min_size=1, max_size=8))
    def run(sequences):
        batches = [pb.TrainBatch(stream_id="warm", sequence=q, bucket=1, samples=encode_samples(live.x),
                                 labels=live.y.tolist()) for q in sequences]
        acks = list(live.stub.Train(iter(batches), timeout=30))
        assert [a.sequence for a in acks] == sequences and all(a.duplicate and not a.applied for a in acks)
        assert all(a.applied_sequence == live.mark for a in acks)
        live.check("Train(duplicates)", lambda: None, allow_ok=True)
    run()


def test_hostile_predict_requests_are_refused_or_answered(live):
    @FUZZ
    @given(samples=st.one_of(bad_samples(3), st.just(encode_samples(live.x[:3]))),
           top_k=st.one_of(st.integers(0, 10), st.integers(11, 2**32 - 1)))
    def run(samples, top_k):
        live.check("Predict", lambda: live.stub.Predict(pb.PredictRequest(samples=samples, top_k=top_k), timeout=30),
                   allow_ok=True)
    run()


@st.composite
def bad_eval_calls(draw, live) -> list[pb.EvalSetChunk]:
    bucket = draw(st.integers(0, 2**32 - 1))
    test = live.stream.buckets[min(bucket, 2)].test
    x, y = test.batch(torch.arange(100))
    chunks = [pb.EvalSetChunk(bucket=bucket, samples=encode_samples(x), labels=y.tolist(), schema=schema_of(live.stream))
              for _ in range(draw(st.integers(1, 3)))]
    kind = draw(st.sampled_from(["samples", "labels", "bucket", "too_many", "none"]))
    i = draw(st.integers(0, len(chunks) - 1))
    if kind == "samples":
        chunks[i].samples.CopyFrom(draw(bad_samples(100)))
    elif kind == "labels":
        chunks[i].ClearField("labels")
        chunks[i].labels.extend(draw(st.lists(INT64, min_size=100, max_size=100)))
    elif kind == "bucket":
        chunks.append(pb.EvalSetChunk(bucket=(bucket + 1) % 2**32, samples=encode_samples(x), labels=y.tolist()))
    elif kind == "too_many":  # 7 × 100 > max_eval_samples (600)
        chunks = [chunks[0]] * 7
    else:
        chunks = []
    return chunks


def test_hostile_eval_sets_are_refused_and_change_nothing(live):
    @FUZZ
    @given(chunks=bad_eval_calls(live))
    def run(chunks):
        live.check("RegisterEvalSet", lambda: live.stub.RegisterEvalSet(iter(chunks), timeout=30))
    run()


def test_end_bucket_out_of_order_is_refused_and_changes_nothing(live):
    @FUZZ
    @given(bucket=st.integers(2, 2**32 - 1), size=st.integers(0, 2**64 - 1))
    def run(bucket, size):
        live.check("EndBucket", lambda: live.stub.EndBucket(pb.EndBucketRequest(bucket=bucket, bucket_size=size),
                                                            timeout=30))
    run()


@pytest.mark.parametrize("data", [png_declaring(50000, 50000), jpeg_declaring(50000, 50000)], ids=["png", "jpeg"])
def test_image_headers_declaring_50000x50000_are_refused_before_decoding(data, monkeypatch):
    """server/codec.py reads the declared size from the header and refuses it; decoding never starts."""
    from PIL import ImageFile

    from server.codec import DecodeLimits, decode_images
    from server.errors import InvalidArgument

    def no_decoding(self):
        raise AssertionError("decoding started")
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(InvalidArgument) as e:
        decode_images(pb.EncodedImages(images=[data]), "samples.images", (1, 8, 8), DecodeLimits())
    assert "pixels" in e.value.message and "refused before decoding" in e.value.message, e.value.message


def test_a_one_megabyte_stream_id_is_refused_by_name(live):
    batch = pb.TrainBatch(stream_id="s" * (1 << 20), sequence=1, bucket=1, samples=encode_samples(live.x),
                          labels=live.y.tolist())
    with pytest.raises(grpc.RpcError) as e:
        list(live.stub.Train(iter([batch]), timeout=30))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and e.value.details().startswith("stream_id")
    assert len(e.value.details()) < 300  # the id is not echoed back whole
    live.check("Train", lambda: list(live.stub.Train(iter([batch]), timeout=30)))


def test_hostile_first_schemas_are_refused_by_name_never_internal(small_stream):
    """A server with no schema yet and a model that takes only C×H×W images (resnet18): first batches
    declaring any shape and class count are refused naming the field or the bound
    (max_sample_values, max_classes, max_model_bytes) or, when within them, taken; never INTERNAL.
    Nothing a refused first batch declared is kept."""
    service = Service(base_settings(model="resnet18", max_message_bytes=MAX_MESSAGE, max_classes=50,
                                    max_sample_values=3 * 64 * 64, max_model_bytes=64 * 2**20)).start()
    channel = channel_to(service)
    stub = pb_grpc.ContinualLearnerStub(channel)
    seen: dict[str, int] = {}

    @FUZZ
    @given(shape=st.sampled_from([[3, 8, 8], [1, 16, 16], [64], [4, 4], [3, 64, 64], [3, 65, 64], [3, 1024, 1024]])
           | st.lists(st.integers(0, 2**20), min_size=0, max_size=5)
           | st.lists(st.integers(1, 40), min_size=1, max_size=4),
           classes=st.sampled_from([2, 10, 50, 51, 100_000]) | st.integers(0, 80), n=st.sampled_from([1, 2]))
    def run(shape, classes, n):
        values = int(np.prod(shape)) if shape else 0
        x = torch.zeros((n, *shape), dtype=torch.uint8) if shape and 0 < values <= 4096 else None
        batch = pb.TrainBatch(stream_id="first", sequence=1, bucket=0, labels=[0] * n,
                              samples=encode_samples(x) if x is not None else pb.Samples(),
                              schema=pb.Schema(class_names=[f"c{i}" for i in range(classes)], input_shape=shape))
        try:
            list(stub.Train(iter([batch]), timeout=60))
            code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            code = e.code()
            assert code in REFUSED, (code, e.details())
            assert "internal" not in e.details().lower(), e.details()
        seen[code.name] = seen.get(code.name, 0) + 1
        status = stub.GetStatus(pb.GetStatusRequest(), timeout=10)
        assert status.has_model == (seen.get("OK", 0) > 0)
    try:
        run()
        assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status == \
            health_pb2.HealthCheckResponse.SERVING
        print("first schemas:", seen)
        assert set(seen) - {"OK"}, seen
    finally:
        channel.close()
        service.stop(grace=0.5)
