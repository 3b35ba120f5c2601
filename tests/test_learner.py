"""The Learner's contract: validation, bucket order, exact checkpoint continuation, GEM's gradients."""
import io

import pytest
import torch

from cl_engine import Learner, LearnerConfig, build_stream
from cl_engine.buffer import ReplayBuffer
from cl_engine.models import build_model
from cl_engine.strategies.gradients import per_bucket_gradients

STREAM = build_stream("digits-rotated", order="time")


def batches(bucket, start, count, size=10):
    train = STREAM.buckets[bucket].train
    for i in range(start, start + count):
        yield train.batch(torch.arange(i * size, (i + 1) * size), train=True)


def trained(config, through_bucket=1, extra=5):
    learner = Learner(config, STREAM.input_shape, STREAM.num_classes)
    for b in range(through_bucket):
        for x, y in batches(b, 0, 15):
            learner.observe(x, y, b)
        learner.end_bucket(b, bucket_size=150)
    for x, y in batches(through_bucket, 0, extra):
        learner.observe(x, y, through_bucket)
    return learner


CONFIGS = {
    "naive": LearnerConfig(strategy="naive", momentum=0.9),
    "replay-reservoir": LearnerConfig(strategy="replay", buffer_capacity=60, momentum=0.9),
    "replay-ratio-el2n": LearnerConfig(strategy="replay", retention="ratio", retain_ratio=0.2, selection="el2n"),
    "replay-balanced": LearnerConfig(strategy="replay", buffer_capacity=40, class_balanced=True),
    "replay-reservoir-end": LearnerConfig(strategy="replay", buffer_capacity=60, retention="reservoir-end"),
    "gem": LearnerConfig(strategy="gem", memory_per_bucket=20),
    "agem": LearnerConfig(strategy="agem", memory_per_bucket=20, agem_sample_size=16),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_state_dict_round_trip_continues_bit_for_bit(name):
    original = trained(CONFIGS[name], through_bucket=2)
    blob = io.BytesIO()
    torch.save(original.state_dict(), blob)
    blob.seek(0)
    restored = Learner.from_state_dict(torch.load(blob, weights_only=False))
    for learner in (original, restored):
        for x, y in batches(2, 5, 10):
            learner.observe(x, y, 2)
        learner.end_bucket(2, bucket_size=150)
    for (k, a), b in zip(original.model.state_dict().items(), restored.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert original.matrix.rows == restored.matrix.rows
    assert original.counters == restored.counters and original.version == restored.version
    assert torch.equal(original.buffer.y[: len(original.buffer)], restored.buffer.y[: len(restored.buffer)])
    assert torch.equal(original.generator.get_state(), restored.generator.get_state())


def test_replay_and_gem_remember_what_naive_forgets():
    """On digits-rotated, memory-based strategies end far more accurate and forget far less."""
    from cl_engine.run import run_stream

    results = {}
    for name, config in {
        "naive": LearnerConfig(strategy="naive"),
        "replay": LearnerConfig(strategy="replay", buffer_capacity=500),
        "gem": LearnerConfig(strategy="gem", memory_per_bucket=50),
    }.items():
        results[name] = run_stream(STREAM, config, batch_size=10, progress=False)["metrics"]
    for name in ("replay", "gem"):
        assert results[name]["acc"] > results["naive"]["acc"] + 0.15
        assert results[name]["forgetting"] < results["naive"]["forgetting"] / 2


def test_reservoir_end_replays_finished_buckets_only():
    learner = Learner(LearnerConfig(strategy="replay", buffer_capacity=60, retention="reservoir-end"),
                      STREAM.input_shape, STREAM.num_classes)
    for b in range(3):
        for x, y in batches(b, 0, 10):
            learner.observe(x, y, b)
            assert set(learner.buffer.buckets_held()) <= set(range(b))  # finished buckets only
        learner.end_bucket(b, bucket_size=100)
        assert b in learner.buffer.buckets_held() and len(learner.buffer) == 60
    with pytest.raises(ValueError, match="needs the online 'reservoir'"):
        LearnerConfig(strategy="replay", retention="reservoir-end", class_balanced=True)
    with pytest.raises(ValueError, match="uniform random by definition"):
        LearnerConfig(strategy="replay", retention="reservoir-end", selection="el2n")


def memory_batches(learner) -> list[int]:
    """From now on, how many memories each of the learner's replay steps draws (appended as they happen)."""
    sizes, draw = [], learner.buffer.draw

    def counting_draw(n, generator):
        sizes.append(n)
        return draw(n, generator)

    learner.buffer.draw = counting_draw
    return sizes


def test_a_partial_last_batch_replays_a_full_batch_of_memories():
    """The memory batch is the bucket's batch size, not the last batch's: a bucket of 104 samples fed in tens
    replays 10 memories with its last 4, as a fixed memory batch does (Avalanche's batch_size_mem); before,
    it replayed 4, which cost 0.3-0.6 points of ACC against Avalanche's Replay over 360 seeds."""
    learner = trained(CONFIGS["replay-reservoir-end"], through_bucket=1, extra=0)
    sizes = memory_batches(learner)
    train = STREAM.buckets[1].train
    for start in range(0, 104, 10):
        learner.observe(*train.batch(torch.arange(start, min(start + 10, 104)), train=True), 1)
    assert sizes == [10] * 11
    learner.end_bucket(1, bucket_size=104)
    x, y = next(batches(2, 0, 1, size=6))  # a new bucket's batch size is its own
    learner.observe(x, y, 2)
    assert sizes[-1] == 6
    explicit = trained(CONFIGS["replay-reservoir-end"].model_copy(update={"replay_batch_size": 3}), extra=0)
    sizes = memory_batches(explicit)
    explicit.observe(*next(batches(1, 0, 1)), 1)
    assert sizes == [3]


def test_a_restored_learner_keeps_the_buckets_memory_batch():
    """A learner restored mid-bucket still replays a full batch of memories with the bucket's partial last batch,
    and continues bit for bit as the original does."""
    original = trained(CONFIGS["replay-reservoir-end"], through_bucket=1, extra=3)
    blob = io.BytesIO()
    torch.save(original.state_dict(), blob)
    blob.seek(0)
    restored = Learner.from_state_dict(torch.load(blob, weights_only=False))
    x, y = STREAM.buckets[1].train.batch(torch.arange(30, 34), train=True)
    for learner in (original, restored):
        sizes = memory_batches(learner)
        learner.observe(x, y, 1)
        assert sizes == [10]
    for (k, a), b in zip(original.model.state_dict().items(), restored.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_bad_batches_are_refused_with_the_reason():
    learner = Learner(LearnerConfig(strategy="naive"), (1, 8, 8), 10)
    good_x, good_y = torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.int64)
    cases = [
        (torch.zeros(4, 64), good_y, "expected \\(n, 1, 8, 8\\)"),
        (good_x, torch.zeros(3, dtype=torch.int64), "one per sample"),
        (torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.int64), "empty batch"),
        (torch.full((4, 1, 8, 8), float("nan")), good_y, "NaN"),
        (good_x, torch.tensor([0, 1, 2, 10]), "expected 0..9"),
        (good_x, torch.tensor([0, -1, 2, 3]), "expected 0..9"),
        (good_x, torch.zeros(4), "expected integers"),
    ]
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    for x, y, message in cases:
        with pytest.raises(ValueError, match=message):
            learner.observe(x, y, 0)
    assert learner.version == 0 and learner.counters["samples_trained"] == 0
    assert all(torch.equal(before[k], v) for k, v in learner.model.state_dict().items())


def test_buckets_are_trained_in_order():
    learner = Learner(LearnerConfig(strategy="naive"), (1, 8, 8), 10)
    x, y = torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ValueError, match="not the open bucket 0"):
        learner.observe(x, y, 1)
    learner.observe(x, y, 0)
    learner.end_bucket(0)
    with pytest.raises(ValueError, match="already finished"):
        learner.observe(x, y, 0)
    with pytest.raises(ValueError, match="already finished"):
        learner.end_bucket(0)


def test_batched_memory_gradients_equal_one_backward_per_bucket():
    model = build_model("mlp", (1, 8, 8), 10)
    buf = ReplayBuffer(60)
    g = torch.Generator().manual_seed(0)
    for b, size in enumerate((20, 13, 20)):  # uneven memories exercise the padding
        buf.write(torch.arange(len(buf), len(buf) + size), torch.randn(size, 1, 8, 8, generator=g),
                  torch.randint(10, (size,), generator=g), b)
    fast = per_bucket_gradients(model, buf, [0, 1, 2])
    for row, b in zip(fast, (0, 1, 2)):
        model.zero_grad()
        x, y = buf.get(buf.slots(torch.tensor([b])))
        torch.nn.functional.cross_entropy(model(x), y).backward()
        torch.testing.assert_close(row, torch.cat([p.grad.flatten() for p in model.parameters()]))


@pytest.mark.parametrize("name,shape", [
    ("mlp", (1, 8, 8)), ("linear", (2048,)), ("resnet18", (3, 32, 32)), ("resnet18", (3, 64, 64)),
    ("resnet18", (1, 32, 32)), ("reduced-resnet18", (3, 32, 32)),
])
def test_every_model_trains_on_its_input(name, shape):
    learner = Learner(LearnerConfig(model=name, strategy="gem", memory_per_bucket=4, lr=0.01), shape, 11)
    x, y = torch.randn(4, *shape), torch.arange(4)
    learner.observe(x, y, 0)
    learner.end_bucket(0)
    step = learner.observe(x, y, 1)  # GEM with one past bucket: exercises memory gradients
    assert learner.predict(x).shape == (4, 11) and step.total == 4
