"""`--send-files`: the replay client sends a CLEAR stream's training images as their files, byte for
byte, and a server on `image_transform=imagenet` decodes them where each batch is applied (the learner's
thread or process) into what the in-process run stores: uint8 pixels, resized and centre cropped, not
augmented, which its learner crops and flips afresh at every use. So the accuracy matrix is the
in-process run's, the memory holds uint8, and two replays of one memory are two different crops."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import client.api
from cl_engine import Learner, StreamOptions, build_stream, run_stream
from cl_engine.streams.clear_fixture import write_clear_fixture
from client.api import Client
from client.replay import Replay, ReplayOptions
from client.report import build_report
from client_helpers import clean_environment, learner, target
from server.checkpoint import CheckpointStore

SIZE = 16
CONFIG = dict(model="mlp", buffer_capacity=10, lr=0.05, seed=1, augment="crop-flip", uint8_inputs="imagenet")


@pytest.fixture(scope="module")
def clear_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("clear") / "clear"  # 2 buckets x 4 classes x 6 photos, one grey a class
    write_clear_fixture(root, buckets=2, classes=("BACKGROUND", "a", "b", "c"), per_class=6, sizes=((40, 30),),
                        grayscale=1)
    return root


@pytest.fixture(scope="module")
def stream(clear_root):
    return build_stream(f"clear:{clear_root}", StreamOptions(image_size=SIZE))


@pytest.fixture
def sent_files(monkeypatch):
    """Every file the client puts on the wire as an encoded image."""
    sent: list[bytes] = []
    encode = client.api.wire.encode_images

    def spy(images):
        sent.extend(images)
        return encode(images)

    monkeypatch.setattr(client.api.wire, "encode_images", spy)
    return sent


@pytest.mark.parametrize("learner_process", [False, True], ids=["learner-thread", "learner-process"])
def test_files_sent_as_they_are_give_the_in_process_matrix(service, stream, clear_root, sent_files, tmp_path, capsys,
                                                           learner_process):
    config = learner(**CONFIG)
    server = service(config, image_transform="imagenet", checkpoint_dir=tmp_path / "ckpt",
                     learner_process=learner_process)
    with Client(target(server)) as c:
        options = ReplayOptions(batch_size=4, epochs=2, query_every=0, progress=False, send_files=True)
        report = build_report(Replay(c, stream, options).run())
        status = c.status()
    assert "warning" not in capsys.readouterr().err
    reference = run_stream(stream, config, batch_size=4, epochs=2, progress=False)
    np.testing.assert_allclose(report["accuracy_matrix"], reference["accuracy_matrix"], rtol=0, atol=1e-9)
    on_disk = {p.read_bytes() for p in clear_root.rglob("*.jpg")}
    assert len(sent_files) == 2 * 2 * 24 and set(sent_files) <= on_disk  # every sample, both epochs, as on disk
    assert status.buffer["bytes"] == reference["buffer"]["bytes"] == 10 * (3 * SIZE * SIZE + 28)  # uint8 pixels
    assert status.buffer["by_bucket"] == reference["buffer"]["by_bucket"]


def test_the_memory_keeps_the_decoded_image_and_each_replay_is_a_fresh_crop(service, stream, tmp_path):
    server = service(learner(**CONFIG), image_transform="imagenet", checkpoint_dir=tmp_path / "ckpt")
    with Client(target(server)) as c:
        Replay(c, stream, ReplayOptions(batch_size=4, query_every=0, progress=False, send_files=True)).run()
    state, _ = CheckpointStore(tmp_path / "ckpt").load_latest()
    memory = state["learner"]["buffer"]["x"]
    assert memory.dtype == torch.uint8 and len(memory) == 10
    stored = torch.cat([b.train.stored(torch.arange(len(b.train)))[0] for b in stream.buckets])
    for x in memory:  # each memory is a whole stored image, as the in-process run stores it: no frozen crop
        assert any(torch.equal(x, s) for s in stored)
    restored = Learner.from_state_dict(state["learner"])
    one = memory[:1]
    first, second = restored.training_view(one), restored.training_view(one)
    assert not torch.equal(first, second)  # two replays of one memory: two crops
    assert torch.equal(restored.view.evaluation(one), restored.view.evaluation(one))


def test_a_stream_without_files_cannot_send_them(service, small_stream):
    with Client(target(service(learner()))) as c:
        with pytest.raises(ValueError, match="not made of image files"):
            Replay(c, small_stream, ReplayOptions(send_files=True, progress=False)).run()
    cli = subprocess.run([sys.executable, "-m", "client", "stream", "--dataset", "digits-rotated", "--send-files",
                          "--target", "127.0.0.1:1"], capture_output=True, text=True, env=clean_environment(),
                         timeout=120)
    assert cli.returncode == 2 and "--send-files: digits-rotated is not an image stream" in cli.stderr
    assert len(cli.stderr.strip().splitlines()) == 1 and "Traceback" not in cli.stderr


def test_a_server_that_would_not_decode_the_files_as_the_stream_does_is_warned_about(service, stream, capsys):
    with Client(target(service(learner(**CONFIG)))) as c:  # image_transform resize-crop: no imagenet views
        Replay(c, stream, ReplayOptions(batch_size=4, query_every=0, progress=False, send_files=True)).run()
    assert "image_transform=imagenet (it has resize-crop)" in capsys.readouterr().err
