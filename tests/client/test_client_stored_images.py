"""Through the service, images travel and stay as stored: the replay client sends uint8 pixels with their
sample ids, the server keeps them uint8 in its memory and augments them itself, and the accuracy matrix
is the in-process run's."""
from __future__ import annotations

import numpy as np
import pytest

from cl_engine import run_stream
from client.api import Client
from client.replay import Replay, ReplayOptions
from client.report import build_report
from client_helpers import learner, target
from image_helpers import SIZE, noise_stream

IMAGES = dict(model="mlp", buffer_capacity=10, lr=0.05, seed=1)


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    return noise_stream(tmp_path_factory.mktemp("noise"))


def test_the_server_stores_uint8_augments_itself_and_matches_the_in_process_run(service, stream, capsys):
    config = learner(**IMAGES, augment="crop-flip", uint8_inputs="imagenet")
    with Client(target(service(config))) as client:
        result = Replay(client, stream, ReplayOptions(batch_size=4, epochs=2, query_every=0, progress=False)).run()
        report = build_report(result)
        status = client.status()
    assert "warning" not in capsys.readouterr().err
    reference = run_stream(stream, config, batch_size=4, epochs=2, progress=False)
    np.testing.assert_allclose(report["accuracy_matrix"], reference["accuracy_matrix"], rtol=0, atol=1e-9)
    assert status.buffer["bytes"] == reference["buffer"]["bytes"] == 10 * (3 * SIZE * SIZE + 28)  # uint8 pixels
    assert status.buffer["by_bucket"] == reference["buffer"]["by_bucket"]


def test_a_server_without_the_streams_augmentation_is_warned_about(service, stream, capsys):
    with Client(target(service(learner(**IMAGES)))) as client:
        Replay(client, stream, ReplayOptions(batch_size=4, query_every=0, progress=False)).run()
    err = capsys.readouterr().err
    assert "augment=crop-flip (it has none)" in err and "--augment crop-flip --uint8-inputs imagenet" in err
