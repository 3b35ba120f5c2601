"""Rollback through the real server and `clstream-client rollback --to-version V` (server/rollback.py):
learner and serving return to a kept version bit for bit, the streams' marks stay (a batch applied
after the version is a duplicate), the kept versions survive a restart, and mistakes are one line."""
from __future__ import annotations

import copy

import torch

from cl_engine import StreamOptions, build_stream
from cl_engine.schedule import bucket_batches
from cli_helpers import one_line_error
from client.api import Batch, Client, Schema
from client.cli import main
from client_helpers import STREAM, learner, start_service, target


def equal(a, b) -> bool:
    """Nested states equal exactly: tensors bit for bit, everything else by ==."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)  # NaN equals NaN here


def batches(stream, bucket: int, first: int, limit: int | None = None) -> list[Batch]:
    train = stream.buckets[bucket].train
    out = []
    for k, index in enumerate(bucket_batches(len(train), 10, 1, 0, bucket)):
        if limit is not None and k >= limit:
            break
        out.append(Batch("s", first + k, bucket, *train.batch(index, train=True)))
    return out


def test_rollback_restores_a_kept_version_bit_for_bit_through_the_cli(tmp_path, capsys):
    stream = build_stream("digits-rotated", StreamOptions(**STREAM))
    schema = Schema(tuple(stream.class_names), tuple(stream.input_shape))
    probe = stream.buckets[0].test.batch(torch.arange(30))[0]
    service = start_service(learner(), checkpoint_dir=tmp_path / "ckpt", rollback_keep=2)
    try:
        with Client(target(service)) as client:
            sent = batches(stream, 0, 1)
            list(client.train(sent, schema=schema))
            client.end_bucket(0)
            kept = copy.deepcopy(service.worker.learner.state_dict())
            answer = client.predict(probe, top_k=10)
            later = batches(stream, 1, len(sent) + 1)
            list(client.train(later))
            client.end_bucket(1)
            list(client.train(batches(stream, 2, len(sent) + len(later) + 1, limit=5)))
            status = client.status()
            v0 = kept["version"]
            assert status.rollback_versions == [v0, v0 + len(later)]
            marks = status.applied_sequences

            assert main(["rollback", "--to-version", str(v0), "--target", target(service)]) == 0
            assert f"back at model version {v0}, open bucket 1; durable" in capsys.readouterr().out

            assert equal(service.worker.learner.state_dict(), kept)  # model, optimizer, memory, matrix, RNG
            again = client.predict(probe, top_k=10)
            assert again.model_version == v0 and again.predictions == answer.predictions
            status = client.status()
            assert status.model_version == status.serving_version == v0 and status.open_bucket == 1
            assert status.applied_sequences == marks  # the marks stay: exactly-once
            (ack,) = client.train([later[0]])
            assert ack.duplicate and not ack.learned  # forgotten, not trained twice
            (ack,) = client.train([Batch("s", marks["s"] + 1, 1, later[0].x, later[0].y)])
            assert ack.learned and ack.model_version == v0 + 1
    finally:
        service.stop(grace=0.5)
    restarted = start_service(learner(), checkpoint_dir=tmp_path / "ckpt", rollback_keep=2)
    try:
        with Client(target(restarted)) as client:
            assert client.status().rollback_versions[0] == v0  # the kept versions are in the checkpoint
            assert main(["rollback", "--to-version", str(v0), "--target", target(restarted)]) == 0
            assert equal(restarted.worker.learner.state_dict()["model"], kept["model"])
        error = one_line_error(["-m", "client", "rollback", "--to-version", "999999", "--target",
                                target(restarted)], code=1)
        assert "FAILED_PRECONDITION" in error and "not kept for rollback" in error and str(v0) in error
    finally:
        restarted.stop(grace=0.5)


def test_a_rollback_mistake_is_one_line():
    assert "--to-version must be at least 1" in one_line_error(["-m", "client", "rollback", "--to-version", "0"])
    assert "--to-version" in one_line_error(["-m", "client", "rollback"])
