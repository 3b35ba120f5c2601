"""Checkpoints: atomic and verified on disk; a restarted server resumes exactly where it stood."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from cl_engine import Learner, LearnerConfig, run_stream
from clstream_proto import continual_learner_pb2 as pb
from server.checkpoint import CheckpointStore, CorruptCheckpoint, decode, encode
from server.service import Service
from service_helpers import base_settings, register_all, train_batches
from test_service_observability import scrape, value


def test_store_round_trip_newest_first_and_pruning(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    assert store.load_latest() is None
    paths = [store.save({"n": n, "t": torch.arange(n)}) for n in range(4)]
    assert [p.name for p in paths] == [f"checkpoint-{k:08d}.ckpt" for k in range(1, 5)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [paths[2].name, paths[3].name]
    state, path = CheckpointStore(tmp_path).load_latest()
    assert path == paths[3] and state["n"] == 3 and torch.equal(state["t"], torch.arange(3))


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty", "header"])
def test_a_corrupt_checkpoint_is_reported_set_aside_and_skipped(tmp_path, damage):
    store = CheckpointStore(tmp_path, keep=5)
    store.save({"n": 1})
    newest = store.save({"n": 2})
    blob = newest.read_bytes()
    newest.write_bytes({"truncate": blob[: len(blob) // 2], "flip": blob[:-5] + bytes([blob[-5] ^ 1]) + blob[-4:],
                        "garbage": b"\x00garbage" * 10, "empty": b"", "header": blob[:30]}[damage])
    fresh = CheckpointStore(tmp_path, keep=5)
    state, path = fresh.load_latest()
    assert state == {"n": 1} and path.name == "checkpoint-00000001.ckpt"
    assert [s.path for s in fresh.skipped] == [newest] and fresh.skipped[0].reason
    assert (tmp_path / "checkpoint-00000002.ckpt.corrupt").exists() and not newest.exists()
    assert fresh.save({"n": 3}).name == "checkpoint-00000003.ckpt"  # never reuses the corrupt one's number


def test_leftover_temp_files_are_removed_and_never_loaded(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save({"n": 1})
    (tmp_path / ".checkpoint-00000002.ckpt.tmp").write_bytes(encode({"n": 2})[:40])
    state, _ = CheckpointStore(tmp_path).load_latest()
    assert state == {"n": 1} and not list(tmp_path.glob("*.tmp"))


def test_payloads_never_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must not run",))

    import hashlib
    import io
    import pickle
    import struct
    payload = io.BytesIO()
    torch.save({"x": Evil()}, payload, pickle_module=pickle)
    data = payload.getvalue()
    blob = b"CLSTREAM-CHECKPOINT-1\n" + struct.pack("<Q32s", len(data), hashlib.sha256(data).digest()) + data
    with pytest.raises(CorruptCheckpoint, match="does not load"):
        decode(blob)


def test_learner_state_survives_the_format(stream):
    config = LearnerConfig(strategy="replay", buffer_capacity=50, momentum=0.9, device="cpu")
    learner = Learner(config, stream.input_shape, stream.num_classes)
    for batch in train_batches(stream, 0, limit=5):
        x = torch.from_numpy(np.frombuffer(batch.samples.tensor.data, "<f4").reshape(-1, 1, 8, 8).copy())
        learner.observe(x, torch.tensor(list(batch.labels)), 0)
    restored = Learner.from_state_dict(decode(encode(learner.state_dict())))
    x, y = stream.buckets[0].train.batch(torch.arange(50, 60))
    assert learner.observe(x, y, 0) == restored.observe(x, y, 0)


def comparable(status: pb.Status) -> bytes:
    """The status as bytes (NaN equals NaN), without what a restart legitimately changes: the
    snapshot is republished on start and the final checkpoint is newer than the one before it (so
    it holds the batches that were applied since the one before)."""
    s = pb.Status()
    s.CopyFrom(status)
    for name in ("serving_version", "last_checkpoint", "last_checkpoint_time", "batches_since_checkpoint",
                 "durable_sequences"):
        s.ClearField(name)
    return s.SerializeToString(deterministic=True)


@pytest.mark.parametrize("learner_process", [False, True], ids=["learner-thread", "learner-process"])
def test_a_restarted_server_resumes_with_the_same_status_and_the_same_result(start, connect, stream, tmp_path,
                                                                             learner_process):
    """Stop mid-bucket, start again on the same directory, resend from the top: duplicates are
    acknowledged, the rest trains, and the matrix equals the uninterrupted in-process run."""
    learner = dict(strategy="replay", buffer_capacity=100, seed=5, device="cpu")
    options = dict(learner, learner_process=learner_process)
    first = start(checkpoint_dir=tmp_path, **options)
    stub = connect(first)
    register_all(stub, stream)
    list(stub.Train(train_batches(stream, 0, seed=5)))
    ended = stub.EndBucket(pb.EndBucketRequest(bucket=0, bucket_size=150))
    assert ended.checkpoint == str(sorted(tmp_path.glob("*.ckpt"))[-1])  # the one named is on disk and loads
    written = decode(Path(ended.checkpoint).read_bytes())
    assert written["learner"]["open_bucket"] == 1 and written["applied_sequences"] == {"s": 15}
    list(stub.Train(train_batches(stream, 1, first_sequence=16, seed=5, limit=6)))
    before = stub.GetStatus(pb.GetStatusRequest())
    first.stop(grace=1.0)  # writes the final checkpoint: 6 batches into bucket 1

    second = start(checkpoint_dir=tmp_path, **options)  # the same settings: config_json compares equal too
    stub = connect(second)
    after = stub.GetStatus(pb.GetStatusRequest())
    assert comparable(after) == comparable(before) and after.serving_version == before.model_version
    assert after.last_checkpoint == str(sorted(tmp_path.glob("*.ckpt"))[-1]) and after.applied_sequences == {"s": 21}
    assert after.last_checkpoint_time >= before.last_checkpoint_time > 0
    acks = list(stub.Train(train_batches(stream, 1, first_sequence=16, seed=5)))
    assert [a.duplicate for a in acks] == [True] * 6 + [False] * 9
    stub.EndBucket(pb.EndBucketRequest(bucket=1, bucket_size=150))
    list(stub.Train(train_batches(stream, 2, first_sequence=31, seed=5)))
    stub.EndBucket(pb.EndBucketRequest(bucket=2, bucket_size=150))
    R = np.array([r.accuracy for r in stub.GetStatus(pb.GetStatusRequest()).accuracy_matrix])
    reference = run_stream(stream, LearnerConfig(**learner), batch_size=10, progress=False)
    np.testing.assert_allclose(R, reference["accuracy_matrix"], rtol=0, atol=1e-9)


def test_checkpoints_every_n_batches_and_a_corrupt_newest_one_on_restart(start, connect, stream, tmp_path):
    service = start(checkpoint_dir=tmp_path, checkpoint_every_batches=4, checkpoint_keep=10)
    stub = connect(service)
    list(stub.Train(train_batches(stream, 0, limit=10)))  # checkpoints after batches 4 and 8
    names = sorted(p.name for p in tmp_path.glob("*.ckpt"))
    assert len(names) == 2
    assert stub.GetStatus(pb.GetStatusRequest()).last_checkpoint.endswith(names[-1])
    service.stop(grace=0.5)  # the final checkpoint: batch 10
    newest = sorted(tmp_path.glob("*.ckpt"))[-1]
    newest.write_bytes(newest.read_bytes()[:-100])
    resumed = start(checkpoint_dir=tmp_path)
    status = connect(resumed).GetStatus(pb.GetStatusRequest())
    assert status.model_version == 8 and status.applied_sequences == {"s": 8}
    assert value(scrape(resumed), "clstream_corrupt_checkpoints", "_total") == 1


def test_a_checkpoint_from_other_learner_settings_is_refused(start, connect, stream, tmp_path):
    service = start(checkpoint_dir=tmp_path, lr=0.1)
    list(connect(service).Train(train_batches(stream, 0, limit=1)))
    service.stop(grace=0.5)
    with pytest.raises(ValueError, match="lr"):
        Service(base_settings(checkpoint_dir=tmp_path, lr=0.2))


def test_a_checkpoint_of_another_schema_is_refused(start, connect, stream, tmp_path):
    service = start(checkpoint_dir=tmp_path)
    list(connect(service).Train(train_batches(stream, 0, limit=1)))
    service.stop(grace=0.5)
    with pytest.raises(ValueError) as refused:
        Service(base_settings(checkpoint_dir=tmp_path, input_shape=[64], class_names=list("abcdefghij")))
    message = str(refused.value)  # each schema named by where it comes from, not the other way round
    assert "does not fit the settings' schema" in message
    checkpoint_part, settings_part = message.split("the checkpoint's model has ")[1].split(", the settings ")
    assert "[1, 8, 8]" in checkpoint_part and "'a'" not in checkpoint_part
    assert "[64]" in settings_part and "'a'" in settings_part


def test_checkpoints_by_time(start, connect, stream, tmp_path):
    service = start(checkpoint_dir=tmp_path, checkpoint_every_batches=0, checkpoint_every_seconds=1e-9,
                    checkpoint_keep=10)
    list(connect(service).Train(train_batches(stream, 0, limit=3)))
    assert len(list(tmp_path.glob("*.ckpt"))) == 3  # the interval has passed after every batch


def test_the_store_prunes_before_writing_and_refuses_a_write_that_cannot_fit(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path, keep=3)
    for n in range(3):
        store.save({"n": n})
    seen: list[int] = []
    replace = os.replace

    def counting_replace(src, dst):
        seen.append(len(list(tmp_path.glob("checkpoint-*.ckpt"))))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", counting_replace)
    store.save({"n": 3})
    assert seen == [2] and len(list(tmp_path.glob("checkpoint-*.ckpt"))) == 3  # room for 3 needed, not 4

    class Full:
        f_bavail, f_frsize = 10, 4096

    monkeypatch.setattr(os, "statvfs", lambda path: Full)
    with pytest.raises(OSError) as full:
        store.save({"n": 4, "t": torch.zeros(100_000)})
    assert full.value.errno == errno.ENOSPC and "40960 bytes are free" in full.value.strerror
    assert "No space left on device" in full.value.strerror and not list(tmp_path.glob(".*.tmp"))
    assert len(list(tmp_path.glob("checkpoint-*.ckpt"))) == 2  # what retention allows went first; one always stays


def test_end_bucket_refuses_a_gap_in_expected_sequences_and_changes_nothing(start, connect, stream, tmp_path):
    stub = connect(start(checkpoint_dir=tmp_path, strategy="replay", buffer_capacity=100, seed=5, device="cpu"))
    register_all(stub, stream)
    list(stub.Train(train_batches(stream, 0, seed=5, limit=10)))
    with pytest.raises(grpc.RpcError) as refused:
        stub.EndBucket(pb.EndBucketRequest(bucket=0, expected_sequences={"s": 15}))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.details() == ("expected_sequences['s']: expected sequence 15 applied before bucket 0 ends, "
                                       "the server's applied mark is 10; send from sequence 11 again (the bucket "
                                       "stays open)")
    assert stub.GetStatus(pb.GetStatusRequest()).open_bucket == 0
    acks = list(stub.Train(train_batches(stream, 0, seed=5)))
    assert [a.duplicate for a in acks] == [True] * 10 + [False] * 5
    ended = stub.EndBucket(pb.EndBucketRequest(bucket=0, expected_sequences={"s": 15}))
    assert ended.durable and not ended.already_ended and decode(Path(ended.checkpoint).read_bytes())[
        "applied_sequences"] == {"s": 15}
    again = stub.EndBucket(pb.EndBucketRequest(bucket=0, expected_sequences={"s": 15}))
    assert again.already_ended and again.durable and again.checkpoint == ended.checkpoint
    status = stub.GetStatus(pb.GetStatusRequest())
    assert status.durable_sequences == {"s": 15} and status.batches_since_checkpoint == 0
    assert not status.checkpoint_error
    ack = next(iter(stub.Train(train_batches(stream, 1, first_sequence=16, seed=5, limit=1))))
    assert ack.applied_sequence == 16 and ack.durable_sequence == 15


def test_a_checkpoint_that_verifies_but_lacks_keys_is_refused_naming_them(tmp_path):
    store = CheckpointStore(tmp_path)
    path = store.save({"format": 1, "schema": None, "learner": None, "applied_sequences": {}, "extra": 1})
    with pytest.raises(ValueError) as refused:
        Service(base_settings(checkpoint_dir=tmp_path))
    message = str(refused.value)
    assert str(path) in message and "missing ['drift', 'last_drift_version', 'last_loss', 'written_at']" in message
    assert "unknown ['extra']" in message


@pytest.mark.parametrize("learner_process", [False, True], ids=["learner-thread", "learner-process"])
def test_a_failing_checkpoint_volume_fails_end_bucket_until_it_is_fixed(start, connect, stream, tmp_path,
                                                                        learner_process):
    """The volume goes bad (here: the folder is replaced by a file, so every write fails with an OS
    error, for root too), then is fixed: EndBucket fails, training health goes NOT_SERVING while
    Predict and "" stay up, and once fixed the same EndBucket writes the checkpoint and answers OK."""
    import shutil

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from service_helpers import channel_to

    folder = tmp_path / "ckpt"
    service = start(checkpoint_dir=folder, checkpoint_every_batches=1, strategy="replay", buffer_capacity=100,
                    seed=5, device="cpu", learner_process=learner_process)
    stub = connect(service)
    health = health_pb2_grpc.HealthStub(channel_to(service))

    def state(name: str) -> str:
        answer = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)

    register_all(stub, stream)
    list(stub.Train(train_batches(stream, 0, seed=5, limit=5)))
    assert state("clstream.v1.Training") == "SERVING"
    shutil.rmtree(folder)
    folder.write_text("not a folder")
    list(stub.Train(train_batches(stream, 0, seed=5)))  # 10 more batches, each due a checkpoint
    with pytest.raises(grpc.RpcError) as failed:
        stub.EndBucket(pb.EndBucketRequest(bucket=0, expected_sequences={"s": 15}))
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert failed.value.details().startswith("not durable: the end of bucket 0 is applied in memory but not on disk")
    assert str(folder) in failed.value.details()
    status = stub.GetStatus(pb.GetStatusRequest())
    assert status.open_bucket == 1 and status.checkpoint_error and status.batches_since_checkpoint == 10
    assert status.durable_sequences == {"s": 5}
    assert state("clstream.v1.Training") == "NOT_SERVING"
    assert state("") == state("clstream.v1.ContinualLearner") == "SERVING"
    failures = value(scrape(service), "clstream_checkpoint_failures", "_total")
    assert 2 <= failures <= 6  # periodic ones back off (1 s, 2 s, ...): not one per batch (10), plus EndBucket's

    folder.unlink()
    folder.mkdir()  # fixed
    again = stub.EndBucket(pb.EndBucketRequest(bucket=0, expected_sequences={"s": 15}))
    assert again.already_ended and again.durable and Path(again.checkpoint).parent == folder
    assert state("clstream.v1.Training") == "SERVING"
    status = stub.GetStatus(pb.GetStatusRequest())
    assert not status.checkpoint_error and status.durable_sequences == {"s": 15}
