"""A Train batch's encoded images are decoded where the batch is applied, not on receipt: a duplicate
is acknowledged without being decoded, and an image that fails to decode fails its batch by name
with nothing applied (the learner thread and the learner process alike)."""
from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
from PIL import Image

from clstream_proto import continual_learner_pb2 as pb

SCHEMA = pb.Schema(class_names=["a", "b"], input_shape=[3, 8, 8])


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def batch(sequence: int, files: list[bytes]) -> pb.TrainBatch:
    return pb.TrainBatch(stream_id="s", sequence=sequence, bucket=0, schema=SCHEMA, labels=[k % 2 for k in range(len(files))],
                         samples=pb.Samples(images=pb.EncodedImages(images=files)))


@pytest.mark.parametrize("learner_process", [False, True], ids=["learner-thread", "learner-process"])
def test_train_images_are_decoded_where_the_batch_is_applied(start, connect, learner_process):
    stub = connect(start(image_transform="imagenet", model="mlp", learner_process=learner_process))
    good = [jpeg(k) for k in range(4)]
    truncated = good[1][:200]  # a whole header, so it passes the checks on receipt; its data ends early
    [ack] = stub.Train(iter([batch(1, good)]))
    assert ack.applied and ack.samples_trained == 4
    [again] = stub.Train(iter([batch(1, [truncated] * 4)]))  # a duplicate: acknowledged, never decoded
    assert again.duplicate and not again.applied
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Train(iter([batch(2, [good[0], truncated, good[2], good[3]])])))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith("samples.images.images[1]: could not be decoded")
    status = stub.GetStatus(pb.GetStatusRequest())
    assert status.samples_trained == 4 and status.applied_sequences["s"] == 1  # nothing of the bad batch applied
