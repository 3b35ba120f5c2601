"""Precision and layout options (cl_engine/precision.py) in-process: bf16 really runs in bfloat16 and is
reproducible, channels_last predicts as the default layout, fp16 is refused off CUDA, the loss scale's policy."""
from __future__ import annotations

import pytest
import torch

from cl_engine import LearnerConfig, StreamOptions, build_stream
from cl_engine.learner import Learner
from cl_engine.precision import LossScale
from cli_helpers import one_line_error

SHAPE = (3, 16, 16)


def images(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *SHAPE, generator=g), torch.randint(0, 4, (n,), generator=g)


def trained(strategy="replay", steps=2, **options):
    """A reduced ResNet18 after `steps` batches, one bucket each (GEM and A-GEM project from the second)."""
    options = {"device": "cpu", **options}
    learner = Learner(LearnerConfig(model="reduced-resnet18", strategy=strategy, lr=0.05, seed=2, memory_per_bucket=8,
                                    agem_sample_size=8, **options), SHAPE, 4)
    for step in range(steps):
        x, y = images(10, seed=step)
        learner.observe(x, y, step)
        learner.end_bucket(step)
    return learner


@pytest.mark.parametrize("strategy", ["naive", "replay", "gem", "agem"])
def test_channels_last_trains_and_predicts_as_the_default_layout(strategy):
    """Equal up to float rounding. (Many steps of this tiny random-label net amplify any rounding, a 1e-7
    nudge of the weights as much as the layout, so the training compared is short.)"""
    x = images(40, seed=99)[0]
    default = trained(strategy)
    nhwc = trained(strategy, channels_last=True)
    assert nhwc.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(nhwc.predict(x), default.predict(x), rtol=0, atol=1e-5)
    nhwc.model.load_state_dict(default.model.state_dict())  # the same weights: the same answers
    torch.testing.assert_close(nhwc.predict(x), default.predict(x), rtol=0, atol=1e-6)


def test_bf16_runs_the_forward_in_bfloat16_and_is_reproducible():
    seen = []
    learner = trained(precision="bf16", steps=0)
    learner.model.conv1.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x, y = images(10)
    learner.observe(x, y, 0)
    logits = learner.logits(x)
    assert seen == [torch.bfloat16, torch.bfloat16] and logits.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in learner.model.parameters())  # weights and updates stay fp32
    a, b = trained("gem", precision="bf16"), trained("gem", precision="bf16")
    assert torch.equal(a.predict(x), b.predict(x))
    assert not torch.equal(a.predict(x), trained("gem").predict(x))


def test_bf16_on_the_mlp_leaves_the_hand_written_fp32_pass():
    """The MLP's hand-written pass is float32 arithmetic: in bf16 it trains through autocast and autograd."""
    stream = build_stream("digits-rotated", StreamOptions(num_buckets=2, samples_per_bucket=30))
    fp32 = Learner(LearnerConfig(strategy="gem", memory_per_bucket=20, device="cpu"), stream.input_shape, 10)
    bf16 = Learner(LearnerConfig(strategy="gem", memory_per_bucket=20, device="cpu", precision="bf16"),
                   stream.input_shape, 10)
    assert fp32.strategy.linear is not None and fp32.strategy.memory_gradients.path == "linear"
    assert bf16.strategy.linear is None and bf16.strategy.memory_gradients.path == "vmap"
    seen = []
    first = next(m for m in bf16.model.modules() if isinstance(m, torch.nn.Linear))
    first.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x, y = stream.buckets[0].train.batch(torch.arange(10))
    bf16.observe(x, y, 0)
    bf16.end_bucket(0)
    bf16.observe(x, y, 1)  # GEM's memory gradients (vmap) and the batch's
    assert seen and set(seen) == {torch.bfloat16}


def test_fp16_on_the_cpu_is_refused_in_one_line():
    line = one_line_error(["-m", "cl_engine", "run", "--precision", "fp16", "--device", "cpu"])
    assert line.startswith("error: ") and "fp16 needs a CUDA device" in line and "bf16" in line
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        LearnerConfig(precision="fp16", device="cpu")


def test_loss_scale_halves_on_overflow_and_grows_after_a_run_of_finite_steps():
    scale = LossScale(True, init=8.0, growth_interval=3)
    scale.update(False)
    assert scale.scale == 4.0
    for _ in range(3):
        scale.update(True)
    assert scale.scale == 8.0
    off = LossScale(False)
    off.update(False)
    assert off.scale == 1.0


def test_the_precision_and_layout_survive_a_checkpoint():
    learner = trained("agem", precision="bf16", channels_last=True)
    x = images(8, seed=5)[0]
    restored = Learner.from_state_dict(learner.state_dict())
    assert restored.config.precision == "bf16" and restored.config.channels_last
    assert torch.equal(restored.predict(x), learner.predict(x))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 trains on CUDA only; this machine has no CUDA device")
@pytest.mark.parametrize("strategy", ["replay", "gem", "agem"])
def test_fp16_trains_on_cuda_with_its_loss_scale(strategy):
    learner = trained(strategy, steps=3, precision="fp16", device="cuda")
    assert learner.strategy.loss_scale.enabled and learner.strategy.loss_scale.scale >= 2.0 ** 15
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in learner.model.parameters())
    x = images(16, seed=7)[0]
    fp32 = trained(strategy, steps=3, device="cuda")
    torch.testing.assert_close(learner.predict(x).cpu(), fp32.predict(x).cpu(), rtol=0, atol=0.05)
