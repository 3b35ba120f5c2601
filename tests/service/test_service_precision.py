"""The precision and layout options through the real server: bf16 trains the matrix the in-process engine
trains, channels_last serves the predictions the default layout serves, fp16 without CUDA is refused at start."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cl_engine import LearnerConfig, run_stream
from clstream_proto import continual_learner_pb2 as pb
from server.codec import encode_samples
from cli_helpers import one_line_error
from service_helpers import run_stream_through, train_batches


@pytest.mark.parametrize("strategy, learner_process", [("replay", False), ("gem", True)])
def test_bf16_service_matches_the_in_process_run(start, connect, stream, strategy, learner_process):
    options = dict(strategy=strategy, lr=0.1, buffer_capacity=200, memory_per_bucket=40, seed=3, device="cpu",
                   precision="bf16")
    reference = run_stream(stream, LearnerConfig(**options), batch_size=10, epochs=1, progress=False)
    fp32 = run_stream(stream, LearnerConfig(**{**options, "precision": "fp32"}), batch_size=10, progress=False)
    assert reference["accuracy_matrix"] != fp32["accuracy_matrix"]  # bf16 really changed the arithmetic
    status, R = run_stream_through(connect(start(learner_process=learner_process, **options)), stream, seed=3)
    np.testing.assert_allclose(R, np.array(reference["accuracy_matrix"]), rtol=0, atol=1e-9)
    assert status.samples_trained == reference["samples_trained"]


def test_channels_last_serves_the_same_predictions(start, connect, stream):
    """A conv model trained and served in channels_last answers as the default layout does (float rounding)."""
    x = stream.buckets[0].test.batch(torch.arange(32))[0]
    answers = []
    for channels_last in (False, True):
        stub = connect(start(model="reduced-resnet18", lr=0.05, seed=1, device="cpu", channels_last=channels_last))
        list(stub.Train(train_batches(stream, 0, limit=3)))  # few steps: longer amplifies the rounding (test_precision)
        reply = stub.Predict(pb.PredictRequest(samples=encode_samples(x), top_k=10))
        answers.append(np.array([[dict(zip(p.top_labels, p.top_probabilities))[c] for c in range(10)]
                                 for p in reply.predictions]))
    default, channels_last = answers
    assert default.shape == (32, 10) and np.ptp(default) > 0.01
    np.testing.assert_allclose(channels_last, default, rtol=0, atol=1e-5)


def test_fp16_without_cuda_is_refused_at_start_in_one_line():
    line = one_line_error(["-m", "server.main", "--precision", "fp16", "--device", "cpu"])
    assert "fp16" in line and "CUDA" in line and "bf16" in line
