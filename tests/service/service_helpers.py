"""Helpers for the service tests: settings for a loopback test server, channels, and the digits
stream as the messages a client sends (the same batches run_stream feeds, by cl_engine.schedule)."""
from __future__ import annotations

import grpc
import numpy as np
import torch

from cl_engine.schedule import bucket_batches
from clstream_proto import continual_learner_pb2 as pb
from server.codec import encode_samples
from server.service import Service
from server.settings import settings_from


def schema_of(stream) -> pb.Schema:
    return pb.Schema(class_names=stream.class_names, input_shape=stream.input_shape)


def base_settings(**overrides):
    values = dict(host="127.0.0.1", port=0, metrics_port=0, device="cpu", shutdown_grace_seconds=1.0)
    values.update(overrides)
    return settings_from(None, **values)


def channel_to(service: Service, credentials: grpc.ChannelCredentials | None = None, **options) -> grpc.Channel:
    target = f"127.0.0.1:{service.port}"
    opts = list(options.items())
    return grpc.secure_channel(target, credentials, opts) if credentials else grpc.insecure_channel(target, opts)


def eval_chunks(stream, bucket: int, chunk: int = 200, schema: bool = True):
    test = stream.buckets[bucket].test
    for start in range(0, len(test), chunk):
        x, y = test.batch(torch.arange(start, min(start + chunk, len(test))))
        yield pb.EvalSetChunk(bucket=bucket, samples=encode_samples(x), labels=y.tolist(),
                              schema=schema_of(stream) if schema and start == 0 else None)


def register_all(stub, stream) -> None:
    for j in range(len(stream.buckets)):
        stub.RegisterEvalSet(eval_chunks(stream, j))


def train_batches(stream, bucket: int, first_sequence: int = 1, stream_id: str = "s", batch_size: int = 10,
                  seed: int = 0, limit: int | None = None):
    """The batches run_stream feeds for `bucket`, as TrainBatch messages with consecutive sequences."""
    train = stream.buckets[bucket].train
    for k, index in enumerate(bucket_batches(len(train), batch_size, 1, seed, bucket)):
        if limit is not None and k >= limit:
            return
        x, y = train.batch(index, train=True)
        yield pb.TrainBatch(stream_id=stream_id, sequence=first_sequence + k, bucket=bucket,
                            samples=encode_samples(x), labels=y.tolist(), schema=schema_of(stream))


def run_stream_through(stub, stream, seed: int):
    """What run_stream does in-process, through the service: every held-out set registered, every bucket's
    batches (run_stream's, for `seed`) trained and the bucket ended with its size. Returns the status and
    its accuracy matrix."""
    register_all(stub, stream)
    sequence = 1
    for bucket in range(len(stream.buckets)):
        acks = list(stub.Train(train_batches(stream, bucket, first_sequence=sequence, seed=seed)))
        sequence += len(acks)
        stub.EndBucket(pb.EndBucketRequest(bucket=bucket, bucket_size=len(stream.buckets[bucket].train)))
    status = stub.GetStatus(pb.GetStatusRequest())
    return status, np.array([r.accuracy for r in status.accuracy_matrix])


def train_buckets(stub, stream, buckets: int) -> list:
    """Buckets 0..buckets-1, each on its own Train call with sequences continuing across them, then
    EndBucket; returns every ack."""
    acks = []
    for bucket in range(buckets):
        acks += stub.Train(train_batches(stream, bucket, first_sequence=1 + len(acks)))
        stub.EndBucket(pb.EndBucketRequest(bucket=bucket))
    return acks
