"""Limits that keep one client's input from costing the server more than its settings allow, against
the real clstream-server process (client.local_server) on loopback, with its resident memory read
from /proc. Figures: limits.json."""
from __future__ import annotations

import grpc
import pytest
import torch

from client.demo import server_flags
from client.local_server import LocalServer
from client_helpers import clean_environment, learner
from clstream_proto import continual_learner_pb2 as pb
from clstream_proto import continual_learner_pb2_grpc as pb_grpc
from server.codec import encode_samples
from test_load import rss_bytes

MiB = 2**20


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = LocalServer(server_flags(learner()), log_path=tmp_path_factory.mktemp("limits") / "server.log",
                    env=clean_environment()).start()
    yield s
    assert s.stop() == 0


def first_batch(shape: tuple[int, ...], classes: int) -> pb.TrainBatch:
    """A first TrainBatch declaring the schema, with one real (uint8) sample of that shape."""
    x = torch.zeros((1, *shape), dtype=torch.uint8)
    return pb.TrainBatch(stream_id="huge", sequence=1, bucket=0, samples=encode_samples(x), labels=[0],
                         schema=pb.Schema(class_names=[f"c{i}" for i in range(classes)], input_shape=shape))


def test_a_huge_first_schema_is_refused_before_anything_is_allocated(server, small_stream, figures):
    """The issue's schema (3×1024×1024 inputs, 100 000 classes, a 3.9 MB message) and two that pass one
    bound but not the next: each refused naming the setting, the server's RSS unchanged, and the server
    then takes a normal schema."""
    cases = [((3, 1024, 1024), 100_000, grpc.StatusCode.INVALID_ARGUMENT, "max_sample_values"),
             ((3, 512, 512), 100_000, grpc.StatusCode.INVALID_ARGUMENT, "max_classes"),
             ((3, 512, 512), 10, grpc.StatusCode.RESOURCE_EXHAUSTED, "max_model_bytes")]
    report = {}
    with grpc.insecure_channel(server.target, options=[("grpc.max_send_message_length", 64 * MiB)]) as channel:
        stub = pb_grpc.ContinualLearnerStub(channel)
        rss_before = rss_bytes(server.process.pid)
        peak = rss_before
        for shape, classes, code, setting in cases:
            with pytest.raises(grpc.RpcError) as e:
                list(stub.Train(iter([first_batch(shape, classes)]), timeout=60))
            assert e.value.code() == code and setting in e.value.details(), e.value.details()
            peak = max(peak, rss_bytes(server.process.pid))
            report[f"{shape} x {classes}"] = {"code": code.name, "details": e.value.details()}
        assert not stub.GetStatus(pb.GetStatusRequest(), timeout=10).has_model
        rss_after = rss_bytes(server.process.pid)
        batch = small_stream.buckets[0].train.batch(torch.arange(10), train=True)
        ok = pb.TrainBatch(stream_id="small", sequence=1, bucket=0, samples=encode_samples(batch[0]),
                           labels=batch[1].tolist(), schema=pb.Schema(class_names=small_stream.class_names,
                                                                      input_shape=small_stream.input_shape))
        assert [a.applied for a in stub.Train(iter([ok]), timeout=60)] == [True]
    report.update(rss_before_mib=rss_before / MiB, rss_peak_mib=peak / MiB, rss_after_mib=rss_after / MiB)
    figures("limits", report)
    assert rss_after - rss_before < 128 * MiB and peak - rss_before < 128 * MiB, report  # 2.2 GiB before the bounds
