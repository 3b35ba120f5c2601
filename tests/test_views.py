"""Samples are stored as they arrived (uint8 images stay uint8) and viewed afresh at every use: the
training view augments each use differently, the evaluation view is always the same, and is the image
set's own evaluation transform."""
import math

import pytest
import torch

from cl_engine import Learner, LearnerConfig, run_stream
from cl_engine.run import with_stream_defaults
from cl_engine.streams import stored_batch
from cl_engine.views import InputView, crop_boxes, crop_flip, resample
from image_helpers import IMAGES_PER_BUCKET, SIZE, noise_stream

CONFIG = LearnerConfig(strategy="replay", model="mlp", buffer_capacity=10, lr=0.05, seed=1, device="cpu")


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    return noise_stream(tmp_path_factory.mktemp("noise"))


@pytest.fixture(scope="module")
def trained(stream):
    """A learner through bucket 0 of the image stream, fed as run_stream feeds it."""
    learner = Learner(with_stream_defaults(CONFIG, stream), stream.input_shape, stream.num_classes)
    for index in torch.arange(IMAGES_PER_BUCKET).split(4):
        learner.observe(*stored_batch(stream.buckets[0].train, index), 0, ids=index)
    learner.end_bucket(0)
    return learner


def test_images_are_stored_in_the_dtype_they_arrived_in(stream, trained):
    buf = trained.buffer
    assert buf.x.dtype == torch.uint8 and len(buf) == 10
    held, _ = stored_batch(stream.buckets[0].train, buf.ids[: len(buf)])
    assert torch.equal(buf.x[: len(buf)], held)  # each memory is its image as stored, un-augmented
    assert buf.bytes_per_sample() == 3 * SIZE * SIZE + 8 + 8 + 8 + 4  # a quarter of a float copy's pixels


def test_the_run_report_shows_the_uint8_memory(stream):
    report = run_stream(stream, CONFIG, batch_size=4, progress=False)
    assert report["config"]["augment"] == "crop-flip" and report["config"]["uint8_inputs"] == "imagenet"
    assert report["buffer"]["bytes"] == 10 * (3 * SIZE * SIZE + 28)


def test_two_replays_of_one_memory_are_two_crops_with_one_evaluation_view(stream, trained):
    buf = trained.buffer
    first, y1 = buf.sample(4, torch.Generator().manual_seed(7))
    second, y2 = buf.sample(4, torch.Generator().manual_seed(7))  # the same memories drawn again
    assert torch.equal(y1, y2) and first.dtype == torch.float32
    assert not torch.allclose(first, second)  # augmented afresh: different crops
    ids = buf.ids[:4]
    view = buf.evaluation_view(buf.x[:4])
    assert torch.equal(view, buf.evaluation_view(buf.x[:4]))
    reference, _ = stream.buckets[0].train.batch(ids, train=False)  # the image set's evaluation transform
    torch.testing.assert_close(view, reference, rtol=0, atol=1e-5)


def test_selection_scores_the_evaluation_view(stream, trained):
    buf = trained.buffer
    reference, _ = stream.buckets[0].train.batch(buf.ids[:4], train=False)
    torch.testing.assert_close(trained.logits(buf.x[:4]), trained.logits(reference), rtol=0, atol=1e-4)


def test_crops_follow_random_resized_crop_bounds():
    boxes = crop_boxes(5000, 32, 32, torch.Generator().manual_seed(0))
    top, left, h, w = boxes.unbind(1)
    assert bool(((top >= 0) & (left >= 0) & (top + h <= 32) & (left + w <= 32)).all())
    area = h * w / (32 * 32)
    assert float(area.min()) >= 0.06 and float(area.max()) <= 1.0  # 8-100%, give or take rounding
    assert float((w / h).min()) > 0.6 and float((w / h).max()) < 1.6
    assert 0.4 < float(area.mean()) < 0.65  # mostly fitted draws, mean area ~0.54 as torchvision's


def test_a_whole_unflipped_crop_is_the_identity_and_flip_mirrors():
    x = torch.rand(2, 3, 8, 8)
    whole = torch.tensor([[0, 0, 8, 8], [0, 0, 8, 8]])
    torch.testing.assert_close(resample(x, whole, torch.tensor([False, True])),
                               torch.stack([x[0], x[1].flip(-1)]), rtol=0, atol=1e-5)
    corner = resample(x, torch.tensor([[0, 0, 4, 4], [4, 4, 4, 4]]), torch.tensor([False, False]))
    # a 4x4 corner blown up to 8x8: its mean is about the corner's
    assert abs(float(corner[0].mean() - x[0, :, :4, :4].mean())) < 0.05
    assert abs(float(corner[1].mean() - x[1, :, 4:, 4:].mean())) < 0.05
    g = torch.Generator().manual_seed(0)
    out = crop_flip(x[:1].expand(400, -1, -1, -1).contiguous(), g)
    assert out.shape == (400, 3, 8, 8) and math.isfinite(float(out.sum()))
    assert InputView("crop-flip").training(torch.zeros(0, 3, 8, 8), g).shape == (0, 3, 8, 8)
    assert torch.equal(InputView("none").training(x, g), x)  # no augmentation: float samples pass as they are
