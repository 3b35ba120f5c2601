"""The step guard (cl_engine/guard.py): a non-finite step is never applied, a finite one exactly as before."""
import math

import pytest
import torch

from cl_engine import Learner, LearnerConfig, build_stream
from cl_engine.guard import OUTLIER_WARMUP, NormalisationShift, StepGuard
from cl_engine.sgd import sgd_step

STREAM = build_stream("digits-rotated", order="time")
STRATEGIES = {
    "naive": dict(strategy="naive", momentum=0.9),
    "replay": dict(strategy="replay", buffer_capacity=60, momentum=0.9),
    "gem": dict(strategy="gem", memory_per_bucket=20),
    "agem": dict(strategy="agem", memory_per_bucket=20, agem_sample_size=16),
}


def batches(bucket, count, size=10):
    train = STREAM.buckets[bucket].train
    for i in range(count):
        yield train.batch(torch.arange(i * size, (i + 1) * size))


def learner_after_one_bucket(model="mlp", steps=12, **config):
    learner = Learner(LearnerConfig(model=model, **config), STREAM.input_shape, STREAM.num_classes)
    for x, y in batches(0, steps):
        learner.observe(x, y, 0)
    learner.end_bucket(0, bucket_size=10 * steps)
    for x, y in batches(1, 2):
        learner.observe(x, y, 1)
    return learner


def weights(learner):
    return [t.clone() for t in learner.model.state_dict().values()]


def assert_unchanged(learner, before, counters):
    for a, b in zip(weights(learner), before):
        assert torch.equal(a, b)
    unchanged = {k: v for k, v in learner.counters.items() if not k.startswith("skipped_")}
    assert unchanged == {k: v for k, v in counters.items() if not k.startswith("skipped_")}


@pytest.mark.parametrize("model", ["mlp", "reduced-resnet18"])
@pytest.mark.parametrize("name", STRATEGIES)
def test_a_batch_with_a_non_finite_loss_changes_nothing(name, model):
    learner = learner_after_one_bucket(model, **STRATEGIES[name])
    before, counters, held = weights(learner), dict(learner.counters), len(learner.buffer)
    x, y = next(batches(1, 1))
    step = learner.observe(torch.full_like(x, 3e38), y, 1)
    assert step.skipped in ("non_finite_loss", "non_finite_gradient") and not step.learned
    assert_unchanged(learner, before, counters)
    assert len(learner.buffer) == held  # the batch's samples do not enter the memory
    assert learner.counters[f"skipped_{step.skipped}"] == 1
    x, y = next(batches(1, 1))  # and the model goes on learning from good batches
    assert learner.observe(x, y, 1).learned


@pytest.mark.parametrize("name", STRATEGIES)
def test_a_step_that_would_overflow_the_weights_is_undone(name):
    learner = learner_after_one_bucket(**STRATEGIES[name], max_update_ratio=0)  # the update-size guard off
    before, counters = weights(learner), dict(learner.counters)
    momentum = {id(p): s["momentum_buffer"].clone() for p, s in learner.optimizer.state.items()
                if s.get("momentum_buffer") is not None}
    learner.optimizer.param_groups[0]["lr"] = 3e38  # an exploding learning rate: lr·g overflows float32
    x, y = next(batches(1, 1))
    step = learner.observe(torch.full_like(x, 100.0), y, 1)
    assert step.skipped == "non_finite_weights"
    assert_unchanged(learner, before, counters)
    for p, s in learner.optimizer.state.items():
        if id(p) in momentum:
            assert torch.equal(s["momentum_buffer"], momentum[id(p)])


@pytest.mark.parametrize("name", ["gem", "agem"])
@pytest.mark.parametrize("model", ["mlp", "reduced-resnet18"])
def test_gem_with_a_non_finite_memory_gradient_applies_nothing(name, model):
    learner = learner_after_one_bucket(model, **STRATEGIES[name])
    learner.buffer.x[: len(learner.buffer)] = 3e38  # every memory of bucket 0: its gradient is not finite
    learner.buffer.version += 1  # written behind the buffer's back: drop what it derived
    before, counters = weights(learner), dict(learner.counters)
    x, y = next(batches(1, 1))
    step = learner.observe(x, y, 1)
    assert step.skipped == "non_finite_gradient"
    assert_unchanged(learner, before, counters)
    assert learner.counters["qp_fallbacks"] == counters["qp_fallbacks"]


@pytest.mark.parametrize("name", STRATEGIES)
def test_finite_steps_are_bit_for_bit_those_of_the_unguarded_update(name, monkeypatch):
    guarded = learner_after_one_bucket(**STRATEGIES[name])
    monkeypatch.setattr(StepGuard, "step", lambda self, grads, losses: sgd_step(self.optimizer, self.params, grads))
    plain = learner_after_one_bucket(**STRATEGIES[name])
    for a, b in zip(weights(guarded), weights(plain)):
        assert torch.equal(a, b)
    assert guarded.matrix.rows == plain.matrix.rows


def test_clipping_bounds_the_update_of_one_batch():
    learner = learner_after_one_bucket(strategy="naive", clip_grad_norm=0.5, lr=0.1)
    before = [p.detach().clone() for p in learner.model.parameters()]
    x, y = next(batches(1, 1))
    learner.observe(x * 0 + 1.0, (y + 1) % 10, 1)  # a batch far from anything learned: a large gradient
    moved = torch.linalg.vector_norm(torch.cat([(p.detach() - b).reshape(-1)
                                                for p, b in zip(learner.model.parameters(), before)]))
    assert 0 < float(moved) <= 0.1 * 0.5 * (1 + 1e-4)


def learner_past_the_warm_up(**config):
    """A learner that has taken more steps than the outlier check's warm-up."""
    learner = Learner(LearnerConfig(**config), STREAM.input_shape, STREAM.num_classes)
    for x, y in batches(0, OUTLIER_WARMUP + 10):
        learner.observe(x, y, 0)
    return learner


@pytest.mark.parametrize("name", STRATEGIES)
def test_a_finite_but_absurd_batch_is_refused_as_a_gradient_outlier(name):
    learner = learner_past_the_warm_up(**STRATEGIES[name])
    before, counters, held = weights(learner), dict(learner.counters), len(learner.buffer)
    x, y = next(batches(1, 1))
    step = learner.observe(torch.full_like(x, 1e4), y, 0)  # inside the default value range
    assert step.skipped == "gradient_outlier" and not step.learned
    assert_unchanged(learner, before, counters)
    assert len(learner.buffer) == held
    assert learner.counters["skipped_gradient_outlier"] == 1


@pytest.mark.parametrize("name", STRATEGIES)
def test_a_finite_but_absurd_batch_for_a_batch_norm_model_is_refused_by_its_statistics(name):
    """Batch norm divides the input's scale out of the gradient (constant 1e4 gives a few times the usual norm,
    under the gradient bar), but the forward pass moves the running statistics thousands-fold, which would make
    every later prediction chance: the guard refuses the step and the statistics are put back."""
    learner = learner_past_the_warm_up(model="reduced-resnet18", **STRATEGIES[name])
    before, counters, held = weights(learner), dict(learner.counters), len(learner.buffer)
    x, y = next(batches(1, 1))
    step = learner.observe(torch.full_like(x, 1e4), y, 0)
    assert step.skipped == "statistics_outlier" and not step.learned
    assert_unchanged(learner, before, counters)  # weights and running statistics
    assert len(learner.buffer) == held
    assert learner.counters["skipped_statistics_outlier"] == 1
    assert learner.observe(*next(batches(1, 1)), 0).learned


@pytest.mark.parametrize("name", ["gem", "agem"])
def test_a_refused_step_counts_no_projection(name):
    """The projection happens before the guard's check: a step refused after it counts only its refusal."""
    learner = learner_after_one_bucket(steps=OUTLIER_WARMUP + 5, **STRATEGIES[name])
    counters = dict(learner.counters)
    x, y = next(batches(1, 1))
    step = learner.observe(torch.full_like(x, 1e4), (y + 1) % STREAM.num_classes, 1)
    assert step.skipped == "gradient_outlier"
    assert learner.counters["projections"] == counters["projections"]
    assert learner.counters["skipped_gradient_outlier"] == counters["skipped_gradient_outlier"] + 1


BLANK_FRAMES = {"constant 0": lambda x, g: torch.zeros_like(x),
                "sensor noise, sd 0.01": lambda x, g: 0.01 * torch.randn(x.shape, generator=g)}


@pytest.mark.parametrize("frames", BLANK_FRAMES)
@pytest.mark.parametrize("name", ["naive", "gem", "agem"])
def test_a_batch_of_blank_frames_for_a_batch_norm_model_is_refused(name, frames):
    """Batch norm divides by the batch's own spread: blank frames' nil variance would scale their few differences
    up about 300-fold (with random labels, one such step takes a trained model to chance). Past the first bucket,
    so GEM and A-GEM run their memory passes before the batch's own."""
    learner = learner_after_one_bucket("reduced-resnet18", steps=OUTLIER_WARMUP + 5, **STRATEGIES[name])
    before, counters, held = weights(learner), dict(learner.counters), len(learner.buffer)
    g = torch.Generator().manual_seed(0)
    x, _ = next(batches(1, 1))
    step = learner.observe(BLANK_FRAMES[frames](x, g), torch.randint(0, STREAM.num_classes, (10,), generator=g), 1)
    assert step.skipped == "statistics_outlier" and not step.learned
    assert_unchanged(learner, before, counters)  # weights and running statistics
    assert len(learner.buffer) == held
    assert learner.observe(*next(batches(1, 1)), 1).learned


def test_batches_of_one_class_are_learned_by_a_batch_norm_model():
    """A batch of one class has less spread than the stream's mixed batches, not nil: never refused."""
    learner = learner_after_one_bucket("reduced-resnet18", steps=OUTLIER_WARMUP + 5, strategy="naive")
    x, y = STREAM.buckets[1].train.batch(torch.arange(len(STREAM.buckets[1].train)))
    for c in range(STREAM.num_classes):
        step = learner.observe(x[y == c][:10], y[y == c][:10], 1)
        assert step.learned, f"class {c}: {step.skipped}"
    assert learner.counters["skipped_statistics_outlier"] == 0


def test_one_image_ten_times_is_refused_where_a_layer_sees_one_pixel():
    """The reduced ResNet18 brings 8×8 digits down to 1×1 maps: there ten copies of one image have no variance
    left, and their gradient is blown up as blank frames' is (with random labels, chance in one step). On 32×32
    images the maps stay 4×4 and the same batch is learned (BENCHMARKS.md, update_guard_conv)."""
    learner = learner_after_one_bucket("reduced-resnet18", steps=OUTLIER_WARMUP + 5, strategy="naive")
    x, y = next(batches(1, 1))
    assert learner.observe(x[:1].repeat(10, 1, 1, 1), y[:1].repeat(10), 1).skipped == "statistics_outlier"


def test_the_variance_check_reads_the_batch_variance_back_from_the_running_one():
    """The batch's own variance, from how its forward pass moved the running variance, is the one batch norm
    used: the reading is √(Σ usual / Σ batch) per layer, as measured directly on the batch."""
    torch.manual_seed(0)
    layer = torch.nn.BatchNorm2d(4).train()
    layer.running_var.fill_(4.0)
    shift = NormalisationShift([layer])
    x = 0.1 * torch.randn(8, 4, 3, 3)  # a hundredth of the usual variance per channel
    shift.start()
    layer(x)
    batch = x.transpose(0, 1).reshape(4, -1).var(dim=1)  # unbiased, as the running variance takes it
    expected = math.sqrt((4 * 4.0 + 4 * layer.eps) / (float(batch.sum()) + 4 * layer.eps))
    assert float(shift.shift()) == pytest.approx(expected, rel=1e-3)
    assert expected > 15


def test_a_cumulative_average_layer_is_read_without_false_collapse():
    """momentum=None: the running variance is a cumulative average, not a fixed blend; it stands for the batch."""
    layer = torch.nn.BatchNorm2d(4, momentum=None).train()
    for _ in range(5):
        layer(torch.randn(8, 4, 3, 3))
    shift = NormalisationShift([layer])
    shift.start()
    layer(torch.randn(8, 4, 3, 3))
    assert float(shift.shift()) < 2


def test_a_model_without_statistics_never_refuses_a_step_for_them():
    learner = learner_past_the_warm_up(strategy="naive")
    assert learner.strategy.guard.shift_bar.ratio == 0
    assert learner.strategy.guard.gradients.ratio == 10


def test_a_lasting_change_of_scale_is_learned_from_again_by_a_batch_norm_model():
    """Inputs that stay 100 times larger grow the running variances about a thousandfold in one step, past the
    bar at first; each refusal lifts the bar (a hundredfold: about 55 refused steps), as the gradients' does."""
    learner = learner_past_the_warm_up(model="reduced-resnet18", strategy="naive", lr=1e-3)
    results = [learner.observe(x * 100, y, 0) for x, y in batches(1, 90)]
    assert results[0].skipped == "statistics_outlier"
    assert all(r.learned for r in results[-20:])


def test_without_the_update_size_guard_the_same_batch_is_learned():
    learner = learner_past_the_warm_up(strategy="naive", gradient_outlier_ratio=0, max_update_ratio=0)
    x, y = next(batches(1, 1))
    assert learner.observe(torch.full_like(x, 1e4), y, 0).learned


def test_a_lasting_change_of_scale_is_learned_from_again():
    """Inputs that stay 50 times larger are refused at first, then the typical norm catches up."""
    learner = learner_past_the_warm_up(strategy="naive", lr=1e-4)
    results = [learner.observe(x * 50, y, 0) for x, y in batches(1, 60)]
    assert not results[0].learned
    assert all(r.learned for r in results[-20:])


def test_the_typical_norm_survives_a_restore():
    learner = learner_past_the_warm_up(strategy="replay")
    restored = Learner.from_state_dict(learner.state_dict())
    assert restored.strategy.guard.state_dict() == learner.strategy.guard.state_dict()
    x, y = next(batches(1, 1))
    assert restored.observe(torch.full_like(x, 1e4), y, 0).skipped == "gradient_outlier"


def test_the_statistics_check_survives_a_restore_and_old_checkpoints_start_it_afresh():
    learner = learner_past_the_warm_up(model="reduced-resnet18", strategy="replay")
    restored = Learner.from_state_dict(learner.state_dict())
    assert restored.strategy.guard.state_dict() == learner.strategy.guard.state_dict()
    x, y = next(batches(1, 1))
    assert restored.observe(torch.full_like(x, 1e4), y, 0).skipped == "statistics_outlier"
    state = learner.state_dict()
    for key in ("statistics_allowance", "statistics_seen"):  # as written before the statistics check
        del state["guard"][key]
    old = Learner.from_state_dict(state)
    assert old.strategy.guard.shift_bar.seen == 0  # its warm-up again
    assert old.strategy.guard.gradients.seen == learner.strategy.guard.gradients.seen


@pytest.mark.parametrize("name", STRATEGIES)
def test_an_exploding_learning_rate_is_refused_before_it_moves_the_weights(name):
    learner = learner_after_one_bucket(**STRATEGIES[name])
    before, counters = weights(learner), dict(learner.counters)
    learner.optimizer.param_groups[0]["lr"] = 1e4  # finite weights after the step, but thrown far away
    x, y = next(batches(1, 1))
    step = learner.observe(x, y, 1)
    assert step.skipped == "update_too_large"
    assert_unchanged(learner, before, counters)


def test_a_fresh_linear_probe_on_large_features_is_not_refused():
    """Small initial weights and 512-d features up to about 10: its first steps move the weights by about
    twice their norm. The update-size guard's default must let that legitimate run learn."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(11, 512, generator=g) * 3
    learner = Learner(LearnerConfig(model="linear", strategy="naive", lr=0.1), (512,), 11)
    for _ in range(100):
        y = torch.randint(0, 11, (10,), generator=g)
        assert learner.observe(torch.relu(centers[y] + 3 * torch.randn(10, 512, generator=g)), y, 0).learned


def test_a_step_that_leaves_a_non_finite_statistic_is_refused_and_the_statistics_put_back():
    """Batch-norm statistics move in the forward pass, not in the update: the guard checks them too, so a
    model the server checked once stays finite under every step it applies (server/publication.py, ServingPublication.servable)."""
    learner = learner_after_one_bucket("reduced-resnet18", strategy="naive")
    before, counters = weights(learner), dict(learner.counters)
    norm = next(m for m in learner.model.modules() if isinstance(m, torch.nn.BatchNorm2d))

    def overflow(module, inputs, output):
        if module.training:
            module.running_var.data.fill_(float("inf"))  # .data: autograd saved it, but train mode never reads it

    hook = norm.register_forward_hook(overflow)
    step = learner.observe(*next(batches(1, 1)), 1)
    hook.remove()
    assert step.skipped == "non_finite_weights" and learner.counters["skipped_non_finite_weights"] == 1
    assert_unchanged(learner, before, counters)
    assert learner.observe(*next(batches(1, 1)), 1).learned
