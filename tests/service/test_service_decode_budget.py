"""The decoding cost of one message is bounded before anything is decoded: the pixels its images
declare together, at most max_message_pixels (server/codec.py), through the real server."""
from __future__ import annotations

import grpc
import numpy as np
import pytest

from clstream_proto import continual_learner_pb2 as pb
from service_helpers import train_batches
from test_service_codec import png_bytes, png_declaring


def images(*files: bytes) -> pb.Samples:
    return pb.Samples(images=pb.EncodedImages(images=list(files)))


def test_a_message_of_many_large_images_is_refused_before_decoding(start, connect, stream, monkeypatch):
    stub = connect(start(max_message_pixels=4 * 256 * 256))
    list(stub.Train(train_batches(stream, 0, limit=1)))  # a model of 1×8×8 to predict with
    real = png_bytes(np.full((256, 256), 200, dtype=np.uint8))
    assert len(stub.Predict(pb.PredictRequest(samples=images(*[real] * 4))).predictions) == 4  # at the budget

    # Five headers declaring 256×256 with no image data behind them: had decoding started, the first
    # would have failed to decode; the budget refuses the message first, naming itself.
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(pb.PredictRequest(samples=images(*[png_declaring(256, 256)] * 5)))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_message_pixels" in e.value.details() and "327680 pixels" in e.value.details(), e.value.details()
    assert "refused before decoding" in e.value.details()
    batch = pb.TrainBatch(stream_id="big", sequence=1, bucket=0, samples=images(*[real] * 5), labels=[0] * 5)
    with pytest.raises(grpc.RpcError) as e:  # the same for training batches
        list(stub.Train(iter([batch])))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_message_pixels" in e.value.details()
    assert stub.GetStatus(pb.GetStatusRequest()).samples_trained == 10
