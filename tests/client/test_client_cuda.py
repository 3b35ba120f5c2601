"""A server whose learner is on a CUDA device (tests marked `cuda`: skipped with the reason where there is
none), driven by the real replay client on loopback: with the learner in a thread of the server and in a
process of its own (CUDA initialised in a spawned process), it learns exactly the in-process run on the
same device, serves its predictions, and its checkpoints move between a CUDA and a CPU server."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cl_engine import run_stream
from cl_engine.schedule import bucket_batches
from client.api import Batch, Client, Schema
from client.replay import Replay, ReplayOptions
from client_helpers import learner, start_service, target

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the cuda helpers
from cuda_helpers import DEVICE, cuda  # noqa: E402

pytestmark = cuda


@pytest.mark.parametrize("strategy", ["replay", "gem"])
@pytest.mark.parametrize("learner_process", [False, True], ids=["learner-thread", "learner-process"])
def test_a_cuda_server_learns_exactly_the_in_process_cuda_run(small_stream, service, strategy, learner_process):
    """The mlp on CUDA takes the same kernels in the server as in-process (float32 matmuls, no atomics in
    its written-out pass), so the matrices are equal, not merely close."""
    config = learner(device=DEVICE, strategy=strategy, memory_per_bucket=40)
    reference = run_stream(small_stream, config, batch_size=10, epochs=1, progress=False)
    live = service(config, learner_process=learner_process)
    with Client(target(live)) as client:
        result = Replay(client, small_stream, ReplayOptions(query_every=5, progress=False)).run()
        status = client.status()
        x = small_stream.buckets[2].test.batch(torch.arange(16))[0]
        answer = client.predict(x, top_k=3)
    assert status.config["device"] == DEVICE
    np.testing.assert_allclose(status.accuracy_matrix, reference["accuracy_matrix"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(status.initial_accuracy, reference["initial_accuracy"], rtol=0, atol=1e-9)
    assert status.samples_trained == reference["samples_trained"] == 600
    assert status.gem_projections == reference["gem_projections"]
    assert result.queries, "predictions were answered from the device's snapshots during training"
    assert answer.model_version == status.model_version and len(answer.predictions) == 16
    assert all(len(p.top_probabilities) == 3 and 0 < sum(p.top_probabilities) <= 1 + 1e-5 for p in answer.predictions)


def test_a_cuda_servers_checkpoint_resumes_on_a_cpu_server_and_back(small_stream, service, tmp_path):
    """Bucket 0 on a CUDA server, bucket 1 on a CPU server from its checkpoint, bucket 2 on CUDA again: each
    restart answers the predictions the stopped server gave, and the run ends with the whole stream
    trained once and a matrix within float rounding of the in-process run (momentum buffers included)."""
    folder = tmp_path / "checkpoints"
    schema = Schema(tuple(small_stream.class_names), tuple(small_stream.input_shape))
    x = small_stream.buckets[2].test.batch(torch.arange(32))[0]
    answers, sequence = [], 1
    for bucket, device in enumerate([DEVICE, "cpu", DEVICE]):
        live = service(learner(momentum=0.9, device=device), checkpoint_dir=folder)
        with Client(target(live)) as client:
            status = client.status()
            assert status.open_bucket == bucket and status.config["device"] == device
            if answers:
                restored, before = client.predict(x, top_k=3), answers[-1]
                assert restored.model_version == before.model_version
                assert restored.labels == before.labels
                np.testing.assert_allclose([p.top_probabilities for p in restored.predictions],
                                           [p.top_probabilities for p in before.predictions], rtol=0, atol=1e-4)
            else:
                for j, b in enumerate(small_stream.buckets):
                    client.register_eval_set(j, b.test.x, b.test.labels, schema=schema)
            batches = list(_batches(small_stream, bucket, sequence))
            acks = list(client.train(batches, schema=schema))
            assert [a.sequence for a in acks] == [b.sequence for b in batches]
            sequence += len(batches)
            assert client.end_bucket(bucket, bucket_size=len(small_stream.buckets[bucket].train)).durable
            answers.append(client.predict(x, top_k=3))
            final = client.status()
        live.stop(grace=5.0)
    reference = run_stream(small_stream, learner(momentum=0.9), batch_size=10, progress=False)
    assert final.samples_trained == reference["samples_trained"] == 600 and final.open_bucket == 3
    np.testing.assert_allclose(final.accuracy_matrix, reference["accuracy_matrix"], rtol=0, atol=0.05)


def _batches(stream, bucket: int, first_sequence: int):
    """The batches run_stream feeds for `bucket` (cl_engine.schedule, seed 3), with their sample ids."""
    train = stream.buckets[bucket].train
    for k, index in enumerate(bucket_batches(len(train), 10, 1, 3, bucket)):
        x, y = train.batch(index, train=True)
        yield Batch("cuda-checkpoint", first_sequence + k, bucket, x, y, sample_ids=index)
