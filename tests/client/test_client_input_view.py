"""uint8 samples are viewed by the serving side as the learner views them: on a server with
`uint8_inputs=imagenet`, Predict, Evaluate, a held-out set and the guarded-promotion canary all see
ImageNet-normalised inputs, so their answers are the in-process learner's, not those of raw [0, 1] pixels."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cl_engine import Learner
from cl_engine.streams import TensorSet
from cl_engine.streams.images import IMAGENET_MEAN, IMAGENET_STD
from client.api import Batch, Client, Schema
from client_helpers import learner, target

SHAPE = (3, 8, 8)
CLASSES = ("a", "b", "c")


def normalised(x: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation written out here, apart from the engine's view."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(120) % 3
    x = torch.randint(0, 256, (120, *SHAPE), generator=g, dtype=torch.uint8)
    x[torch.arange(120), y] //= 3  # a little signal per class
    return x, y


def test_uint8_samples_are_served_as_the_in_process_learner_sees_them(service, data):
    x, y = data
    train_x, train_y, test_x, test_y = x[:80], y[:80], x[80:], y[80:]
    config = learner(model="mlp", strategy="naive", lr=0.05, uint8_inputs="imagenet", seed=5)
    reference = Learner(config, SHAPE, len(CLASSES))
    reference.register_eval_set(0, TensorSet(normalised(test_x), test_y))  # floats: the normalised pixels
    for k in range(8):
        reference.observe(train_x[k * 10:(k + 1) * 10], train_y[k * 10:(k + 1) * 10], 0)
    row = reference.end_bucket(0)

    server = service(config, guarded_promotion=True, promotion_tolerance=1.0)  # every version passes the canary
    schema = Schema(CLASSES, SHAPE)
    with Client(target(server)) as client:
        client.register_eval_set(0, test_x, test_y, schema=schema)  # uint8: the server views it
        acks = list(client.train((Batch("s", k + 1, 0, train_x[k * 10:(k + 1) * 10], train_y[k * 10:(k + 1) * 10])
                                  for k in range(8)), schema=schema))
        end = client.end_bucket(0)
        status = client.status()
        served = client.predict(test_x, top_k=3)
        evaluated = client.evaluate(test_x, test_y)

    assert all(a.applied for a in acks) and served.model_version == status.model_version == 8
    assert end.row == pytest.approx([row[0]], abs=1e-12)  # the held-out set, uint8 on the server
    assert status.promotion["canary_accuracy"] == pytest.approx(row[0], abs=1e-12)  # the canary: the same set
    expected = reference.predict(test_x)  # the learner views uint8 itself
    got = np.zeros((len(test_x), 3))
    for i, p in enumerate(served.predictions):
        got[i, p.top_labels] = p.top_probabilities
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert [p.label for p in served.predictions] == expected.argmax(dim=1).tolist()
    assert evaluated.accuracy == pytest.approx(reference.evaluate(TensorSet(normalised(test_x), test_y)), abs=1e-12)
    logits = reference.logits(test_x)
    assert evaluated.loss == pytest.approx(float(torch.nn.functional.cross_entropy(logits, test_y)), rel=1e-5)
    raw = reference.model(test_x.float() / 255.0)  # what serving answered before: pixels not normalised
    assert not torch.allclose(torch.softmax(raw, dim=1), expected, atol=1e-3)  # so this test tells them apart
