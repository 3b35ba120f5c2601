"""A cosine learning-rate schedule through the service: the replay client declares each bucket's planned
batches, the server anneals over them exactly as the in-process run does (same matrix), and a batch that
opens a bucket without the declaration is refused, naming the field."""
from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch

from cl_engine import run_stream
from client.api import Batch, Client, ServiceError
from client.replay import Replay, ReplayOptions
from client.report import build_report
from client_helpers import learner, target

EPOCHS = 2


def test_the_services_cosine_schedule_is_the_in_process_one(service, small_stream):
    config = learner(lr_schedule="cosine", momentum=0.9)
    with Client(target(service(config))) as client:
        result = Replay(client, small_stream, ReplayOptions(epochs=EPOCHS, query_every=0, progress=False)).run()
        report = build_report(result)
    reference = run_stream(small_stream, config, batch_size=10, epochs=EPOCHS, progress=False)
    np.testing.assert_allclose(report["accuracy_matrix"], reference["accuracy_matrix"], rtol=0, atol=1e-9)
    constant = run_stream(small_stream, learner(momentum=0.9), batch_size=10, epochs=EPOCHS, progress=False)
    assert constant["accuracy_matrix"] != reference["accuracy_matrix"]  # the schedule is not a no-op


def test_a_bucket_opened_without_its_planned_batches_is_refused(service, small_stream):
    with Client(target(service(learner(lr_schedule="cosine")))) as client:
        x, y = small_stream.buckets[0].train.batch(torch.arange(10))
        with pytest.raises(ServiceError) as e:
            list(client.train([Batch("s", 1, 0, x, y)], schema=Replay(client, small_stream).schema))
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "bucket_batches" in e.value.details and "planned batch count" in e.value.details
        acks = list(client.train([Batch("s", 1, 0, x, y, bucket_batches=20)], schema=Replay(client, small_stream).schema))
        assert acks[0].applied
