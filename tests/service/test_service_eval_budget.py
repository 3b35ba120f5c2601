"""Held-out sets through the real server: a total budget of samples and bytes across all sets (so
also in checkpoints), and uint8 samples kept as uint8 (server/eval_sets.py)."""
from __future__ import annotations

import grpc
import pytest
import torch

from clstream_proto import continual_learner_pb2 as pb
from server.checkpoint import CheckpointStore
from server.codec import encode_samples
from service_helpers import schema_of, train_batches

N = 539  # samples in each bucket's held-out set of the digits stream


def chunks(stream, bucket: int, uint8: bool):
    x, y = stream.buckets[bucket].test.batch(torch.arange(N))
    if uint8:
        x = (x * 255).round().clamp(0, 255).to(torch.uint8)
    return [pb.EvalSetChunk(bucket=bucket, samples=encode_samples(x[i:i + 200]), labels=y[i:i + 200].tolist(),
                            schema=schema_of(stream)) for i in range(0, N, 200)]


def refused(stub, stream, bucket: int, uint8: bool) -> str:
    with pytest.raises(grpc.RpcError) as e:
        stub.RegisterEvalSet(iter(chunks(stream, bucket, uint8)))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    return e.value.details()


def test_the_held_out_sets_share_a_total_sample_budget(start, connect, stream):
    stub = connect(start(max_eval_total_samples=2 * N))
    for bucket in (0, 1):
        assert stub.RegisterEvalSet(iter(chunks(stream, bucket, uint8=False))).num_samples == N
    details = refused(stub, stream, 2, uint8=False)
    assert "max_eval_total_samples (1078)" in details and f"to {3 * N} samples" in details, details
    assert list(stub.GetStatus(pb.GetStatusRequest()).eval_buckets) == [0, 1]  # nothing of the refused set kept
    assert stub.RegisterEvalSet(iter(chunks(stream, 1, uint8=False))).already_registered  # a re-upload still is


def test_uint8_sets_stay_uint8_in_memory_and_in_checkpoints_and_the_byte_budget_counts_them(start, connect, stream,
                                                                                           tmp_path):
    per_uint8 = N * (64 + 8)  # 8×8 values of 1 byte, an int64 label
    service = start(max_eval_total_bytes=2 * per_uint8 + 100, checkpoint_dir=tmp_path)
    stub = connect(service)
    for bucket in (0, 1):
        assert stub.RegisterEvalSet(iter(chunks(stream, bucket, uint8=True))).num_samples == N
    assert stub.RegisterEvalSet(iter(chunks(stream, 1, uint8=True))).already_registered
    details = refused(stub, stream, 2, uint8=True)
    assert "max_eval_total_bytes" in details and "as uint8" in details, details
    details = refused(stub, stream, 2, uint8=False)  # float32: four times the bytes
    assert "max_eval_total_bytes" in details and "as float32" in details, details

    list(stub.Train(train_batches(stream, 0)))
    end = stub.EndBucket(pb.EndBucketRequest(bucket=0))
    assert end.durable and len(end.row.accuracy) == 2
    state, _ = CheckpointStore(tmp_path, 3).load_latest()
    held = state["learner"]["eval_sets"]
    assert sorted(held) == [0, 1] and all(x.dtype == torch.uint8 and x.shape == (N, 1, 8, 8) for x, _ in held.values())

    # The row on uint8 sets equals the row on the same samples sent as float32 (scaled alike: x / 255).
    other = connect(start())
    for bucket in (0, 1):
        x = (stream.buckets[bucket].test.batch(torch.arange(N))[0] * 255).round().clamp(0, 255) / 255
        y = stream.buckets[bucket].test.batch(torch.arange(N))[1]
        other.RegisterEvalSet(iter([pb.EvalSetChunk(bucket=bucket, samples=encode_samples(x), labels=y.tolist(),
                                                    schema=schema_of(stream))]))
    list(other.Train(train_batches(stream, 0)))
    assert list(other.EndBucket(pb.EndBucketRequest(bucket=0)).row.accuracy) == list(end.row.accuracy)
