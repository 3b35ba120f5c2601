"""The replay memory keeps what its flags promise: the asked count or share of every bucket, a capacity
that cuts it announced and reported, and never one sample twice, however many epochs."""
import json

import pytest
import torch

from cl_engine import Learner, LearnerConfig, StreamOptions, build_stream
from cl_engine.__main__ import main
from cl_engine.buffer import ReplayBuffer, content_ids

# 10 buckets of 150: the asked memories (1200) are more than the old default capacity (1000).
STREAM_FLAGS = ["--dataset", "digits-rotated", "--buckets", "10", "--samples-per-bucket", "150"]


def run(capsys, tmp_path, *args):
    report = tmp_path / "report.json"
    code = main(["run", *STREAM_FLAGS, "--model", "mlp", "--batch-size", "10", "--report", str(report), *args])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(report.read_text()), out.err


@pytest.mark.parametrize("flags,asked", [
    (["--strategy", "gem", "--memory-per-bucket", "120"], 120),
    (["--strategy", "replay", "--retention", "per-bucket", "--memory-per-bucket", "120"], 120),
    (["--strategy", "replay", "--retain-ratio", "0.8"], 120),
])
def test_every_bucket_keeps_exactly_what_it_asks_with_no_capacity_given(capsys, tmp_path, flags, asked):
    report, err = run(capsys, tmp_path, *flags)
    buffer = report["buffer"]
    assert {int(k): v for k, v in buffer["by_bucket"].items()} == dict.fromkeys(range(10), asked)
    assert {int(k): v for k, v in buffer["asked_by_bucket"].items()} == dict.fromkeys(range(10), asked)
    assert buffer["size"] == 10 * asked and buffer["bounded"] is False
    assert buffer["cut_warning"] is None and "warning" not in err


def test_a_capacity_that_cuts_a_share_is_announced_at_start_and_reported(capsys, tmp_path):
    report, err = run(capsys, tmp_path, "--strategy", "replay", "--retention", "per-bucket",
                      "--memory-per-bucket", "120", "--buffer-capacity", "500")
    warning = next(line for line in err.splitlines() if line.startswith("warning:"))
    assert "capacity 500" in warning and "1200 asked" in warning and "from bucket 4 on" in warning
    assert err.index(warning) < err.index("bucket 1/10 done")  # before any training
    buffer = report["buffer"]
    kept = {int(k): v for k, v in buffer["by_bucket"].items()}
    asked = {int(k): v for k, v in buffer["asked_by_bucket"].items()}
    assert asked == dict.fromkeys(range(10), 120)
    assert sum(kept.values()) == 500 and all(kept[b] < asked[b] for b in range(10))
    assert buffer["cut_warning"] == warning.removeprefix("warning: ")


def test_a_capacity_that_fits_is_not_announced(capsys, tmp_path):
    report, err = run(capsys, tmp_path, "--strategy", "gem", "--memory-per-bucket", "20", "--buffer-capacity", "200")
    assert "warning" not in err and report["buffer"]["cut_warning"] is None
    assert report["buffer"]["size"] == 200 and report["buffer"]["bounded"] is True


STREAM = build_stream("digits-rotated", StreamOptions(num_buckets=2, samples_per_bucket=100))


def train_epochs(config, epochs, with_ids):
    learner = Learner(config, STREAM.input_shape, STREAM.num_classes)
    for b, bucket in enumerate(STREAM.buckets):
        for epoch in range(epochs):
            order = torch.randperm(100, generator=torch.Generator().manual_seed(epoch))
            for index in order.split(10):
                x, y = bucket.train.batch(index, train=True)
                learner.observe(x, y, b, ids=index if with_ids else None)
        learner.end_bucket(b)
    return learner


@pytest.mark.parametrize("with_ids", [True, False], ids=["dataset-index", "content"])
@pytest.mark.parametrize("config", [
    LearnerConfig(strategy="replay", buffer_capacity=150, device="cpu"),
    LearnerConfig(strategy="replay", buffer_capacity=150, retention="reservoir-end", device="cpu"),
    LearnerConfig(strategy="replay", retain_ratio=1.0, retention="ratio", device="cpu"),
    LearnerConfig(strategy="gem", memory_per_bucket=100, device="cpu"),
], ids=["reservoir", "reservoir-end", "ratio", "per-bucket"])
def test_three_epochs_never_put_one_sample_twice_in_memory(config, with_ids):
    learner = train_epochs(config, epochs=3, with_ids=with_ids)
    buf = learner.buffer
    held = buf.x[: buf.size]
    assert len(torch.unique(held.reshape(buf.size, -1), dim=0)) == buf.size  # no two equal memories
    pairs = set(zip(buf.bucket[: buf.size].tolist(), buf.ids[: buf.size].tolist()))
    assert len(pairs) == buf.size
    if config.retention in ("ratio", "per-bucket"):  # every distinct sample asked for, each once
        assert buf.counts_by_bucket() == {0: 100, 1: 100}


def test_an_unbounded_memory_grows_keeping_its_contents_and_restores():
    buf = ReplayBuffer(None)
    x = torch.arange(12, dtype=torch.uint8).view(6, 2)
    buf.reserve(4)
    buf.write(torch.arange(4), x[:4], torch.arange(4), bucket=0)
    buf.reserve(6)
    buf.write(torch.arange(4, 6), x[4:], torch.arange(4, 6), bucket=1)
    assert buf.x.dtype == torch.uint8 and torch.equal(buf.x[:6], x) and buf.capacity == 6
    again = ReplayBuffer(None)
    again.load_state_dict(buf.state_dict())
    assert torch.equal(again.x[:6], x) and torch.equal(again.ids[:6], buf.ids[:6])
    with pytest.raises(ValueError, match="do not fit a memory of capacity 3"):
        ReplayBuffer(3).reserve(4)


def test_content_ids_are_equal_for_equal_samples_only():
    x = torch.rand(300, 3, 8, 8)
    x[7] = x[3]
    ids = content_ids(x)
    assert ids[7] == ids[3] and len(set(ids.tolist())) == 299


def filled(n):
    """A memory of n samples whose value is their slot, so a draw says which memories it gave."""
    buf = ReplayBuffer(n)
    buf.write(torch.arange(n), torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n) % 10, bucket=0)
    return buf


def drawn(buf, n, generator):
    x, _ = buf.draw(n, generator)
    return x[:, 0].long().tolist()


def test_replay_draws_every_memory_once_before_any_twice():
    buf, g = filled(25), torch.Generator().manual_seed(0)
    passes = [[m for _ in range(3) for m in drawn(buf, 10, g)] for _ in range(4)]  # draws of 10, 10 and 5
    assert all(sorted(p) == list(range(25)) for p in passes)
    assert len({tuple(p) for p in passes}) == 4  # every pass in an order of its own
    assert sorted(drawn(filled(6), 10, g)) == list(range(6))  # at most n held: all of them


def test_a_change_of_the_memory_starts_a_new_pass():
    buf, g = filled(25), torch.Generator().manual_seed(0)
    drawn(buf, 10, g)
    buf.write(torch.tensor([3]), torch.tensor([[100.0]]), torch.tensor([0]), bucket=1)  # slot 3 now holds 100
    after = [m for _ in range(3) for m in drawn(buf, 10, g)]
    assert sorted(after) == sorted([*range(25)[:3], 100, *range(4, 25)])


def test_a_restored_memory_continues_its_pass():
    buf, g = filled(25), torch.Generator().manual_seed(0)
    first = drawn(buf, 10, g)
    state = buf.state_dict()
    again = ReplayBuffer(25)
    again.load_state_dict(state)
    rest = [drawn(m, 10, torch.Generator().manual_seed(1)) + drawn(m, 10, torch.Generator().manual_seed(1))
            for m in (buf, again)]
    assert rest[0] == rest[1] and sorted(first + rest[0]) == list(range(25))
    older = ReplayBuffer(25)  # a checkpoint from before passes: a new pass from the restored contents
    older.load_state_dict({k: v for k, v in state.items() if k != "pass"})
    assert sorted(m for _ in range(3) for m in drawn(older, 10, g)) == list(range(25))
