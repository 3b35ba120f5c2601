"""The learner in a process of its own (`learner_process`): what differs from the learner thread.
What is the same (the accuracy matrix, validation, checkpoints and restarts, metrics, predictions
during training) runs in both modes in the other service tests."""
from __future__ import annotations

import os
import signal

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clstream_proto import continual_learner_pb2 as pb
from server.codec import encode_samples
from server.service import Service
from service_helpers import base_settings, channel_to, train_batches


@pytest.mark.parametrize("learner_process", [False, True], ids=["learner-thread", "learner-process"])
def test_a_batch_the_learner_refuses_ends_its_call_and_drops_the_rest_unapplied(start, connect, stream,
                                                                                 learner_process):
    """Refused by the learner itself (bucket order), not by validation: batches already sent after it
    are dropped, wherever they wait (the queue, or the pipe to the learner process)."""
    stub = connect(start(learner_process=learner_process))
    batches = list(train_batches(stream, 0, limit=8))
    batches[3].bucket = 2  # bucket 0 is open: FAILED_PRECONDITION from the learner's check
    acks = []
    with pytest.raises(grpc.RpcError) as e:
        for ack in stub.Train(iter(batches)):
            acks.append(ack)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "end bucket 0 first" in e.value.details()
    assert [a.sequence for a in acks] == [1, 2, 3]
    status = stub.GetStatus(pb.GetStatusRequest())
    assert status.applied_sequences == {"s": 3} and status.batches_trained == 3
    again = list(stub.Train(train_batches(stream, 0, first_sequence=4, limit=2)))  # and the server trains on
    assert [a.applied for a in again] == [True, True]


def test_a_dead_learner_process_ends_training_and_health_while_predict_still_answers(start, connect, stream):
    service = start(learner_process=True)
    stub = connect(service)
    list(stub.Train(train_batches(stream, 0, limit=3)))
    probe = pb.PredictRequest(samples=encode_samples(stream.buckets[0].test.batch(torch.arange(4))[0]))
    before = stub.Predict(probe)
    learner = service.worker._process.pid
    assert os.getpriority(os.PRIO_PROCESS, learner) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)  # learner_nice
    os.kill(learner, signal.SIGKILL)  # the server reaps it (joining here too would race it for the exit code)
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Train(train_batches(stream, 0, first_sequence=4, limit=2)))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"learner process exited (exit code {-signal.SIGKILL})" in e.value.details()
    after = stub.Predict(probe)
    assert after.model_version == before.model_version == 3
    assert [p.label for p in after.predictions] == [p.label for p in before.predictions]
    status = stub.GetStatus(pb.GetStatusRequest())
    assert status.batches_trained == 3 and status.applied_sequences == {"s": 3}
    with channel_to(service) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING  # so that an orchestrator restarts it
    with pytest.raises(grpc.RpcError) as e:  # and again, at once: nothing waits for a learner that is gone
        stub.EndBucket(pb.EndBucketRequest(bucket=0), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_learner_process_that_cannot_start_fails_the_server_start_with_the_reason():
    """The model is built at start when the settings fix the schema; on a device that is not there,
    the learner process reports why, and start raises it (clstream-server then exits 2)."""
    settings = base_settings(learner_process=True, class_names=list("0123456789"), input_shape=[1, 8, 8],
                             device="cuda:99")
    with pytest.raises(RuntimeError, match="the learner process could not start: .*cuda"):
        Service(settings).start()
