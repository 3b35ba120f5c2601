"""A schema's declared value range is checked on the values the model sees, in their own precision: every
uint8 pixel lies in an image stream's range (normalised_range(): 0 and 255 in each channel after ImageNet
normalisation, which the server computes in float32 while the range is float64), a float32 sample equal to a
declared bound lies in it, and a sample past a bound is refused by name: INVALID_ARGUMENT, never INTERNAL."""
from __future__ import annotations

import grpc
import pytest
import torch

from cl_engine.streams.images import normalised_range
from client.api import Batch, Client, Schema, ServiceError
from client_helpers import learner, target

SIZE = 4


def saturated() -> tuple[torch.Tensor, torch.Tensor]:
    """Six grey images, each with one channel at 0 or at 255: every channel's both ends."""
    x = torch.full((6, 3, SIZE, SIZE), 128, dtype=torch.uint8)
    for c in range(3):
        x[2 * c, c], x[2 * c + 1, c] = 0, 255
    return x, torch.arange(6) % 2


@pytest.mark.parametrize("learner_process", [False, True], ids=["learner-thread", "learner-process"])
def test_black_and_white_pixels_lie_in_an_image_streams_range(service, tmp_path, learner_process):
    config = learner(buffer_capacity=10, augment="crop-flip", uint8_inputs="imagenet")
    server = service(config, image_transform="imagenet", checkpoint_dir=tmp_path / "ckpt",
                     learner_process=learner_process)
    schema = Schema(("a", "b"), (3, SIZE, SIZE), normalised_range())
    x, y = saturated()
    with Client(target(server)) as c:
        [ack] = c.train([Batch("s", 1, 0, x, y)], schema=schema)
        assert ack.applied and ack.samples_trained == 6
        assert c.register_eval_set(0, x, y, schema=schema).num_samples == 6
        assert len(c.predict(x).predictions) == 6


def test_a_float32_sample_at_a_bound_is_in_and_one_past_it_is_refused_by_name(service):
    server = service(learner())
    schema = Schema(("a", "b"), (2,), (-0.1, 0.3))  # neither bound is a float32 number: each rounds past itself
    at_bounds = torch.tensor([[-0.1, 0.3], [0.0, 0.3], [0.3, -0.1]], dtype=torch.float32)
    with Client(target(server)) as c:
        [ack] = c.train([Batch("s", 1, 0, at_bounds, torch.tensor([0, 1, 0]))], schema=schema)
        assert ack.applied
        past = at_bounds.clone()
        past[2, 1] = -0.1001
        with pytest.raises(ServiceError) as e:
            list(c.train([Batch("s", 2, 0, past, torch.tensor([0, 1, 0]))], schema=schema))
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT, e.value
    assert e.value.details == ("samples: sample 2 holds the value -0.1001; expected values in [-0.1, 0.3] (the "
                               "schema's value range)")
