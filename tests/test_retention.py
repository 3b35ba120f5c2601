"""The replay memory stays within capacity and keeps what each retention policy promises."""
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cl_engine.buffer import ReplayBuffer
from cl_engine.retention import BucketRetention, ReservoirRetention, balanced_quota


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def samples(n, start=0, classes=10):
    ids = torch.arange(start, start + n, dtype=torch.float32)
    return ids[:, None].repeat(1, 4), (torch.arange(start, start + n) % classes)


def test_buffer_preallocates_and_accounts_by_bucket_and_class():
    buf = ReplayBuffer(6)
    x, y = samples(4)
    buf.write(torch.arange(4), x, y, bucket=2)
    assert buf.x.shape == (6, 4) and len(buf) == 4
    assert buf.counts_by_bucket() == {2: 4}
    assert buf.counts_by_class() == {0: 1, 1: 1, 2: 1, 3: 1}
    assert buf.nbytes() == 6 * (4 * 4 + 8 + 8 + 8 + 4)  # sample, label, bucket, id, priority
    bx, by = buf.sample(10, gen())
    assert len(by) == 4 and sorted(by.tolist()) == [0, 1, 2, 3]


def test_reservoir_never_exceeds_capacity_and_samples_uniformly():
    runs, n, capacity = 100, 300, 30
    hits = torch.zeros(n)
    for seed in range(runs):
        buf = ReplayBuffer(capacity)
        r = ReservoirRetention(buf)
        g = gen(seed)
        for start in range(0, n, 10):
            x, y = samples(10, start)
            r.observe(x, y, bucket=start // 100, generator=g)
            assert len(buf) <= capacity
        assert len(buf) == capacity
        hits[buf.x[:, 0].long()] += 1
    # Every sample is held with probability 30/300: early, middle and late thirds alike
    # (each third's rate is an average of 10,000 draws: standard error 0.003).
    for third in hits.view(3, -1):
        assert abs(float(third.mean()) / runs - 0.1) < 0.015


def test_reservoir_is_algorithm_r_slot_for_slot():
    """Against a per-sample reference (one uniform draw per arrival once full, j = floor(u·k)), with
    batches that straddle the moment the memory fills and a sample taking a slot another of its
    batch took."""
    capacity, g_ours, g_ref = 25, gen(5), gen(5)
    buf = ReplayBuffer(capacity)
    r = ReservoirRetention(buf)
    held = [None] * capacity
    seen = 0
    for start in range(0, 400, 7):
        x, y = samples(7, start)
        r.observe(x, y, bucket=0, generator=g_ours)
        for i in range(7):
            seen += 1
            if seen <= capacity:
                held[seen - 1] = start + i
            else:
                j = int(float(torch.rand(1, generator=g_ref, dtype=torch.float64)) * seen)
                if j < capacity:
                    held[j] = start + i
        assert buf.x[: len(buf), 0].long().tolist() == [h for h in held if h is not None]
    assert torch.equal(g_ours.get_state(), g_ref.get_state())


def test_deferred_reservoir_lands_at_bucket_end_what_the_online_one_holds():
    """Same arrivals, same generator: within a bucket the deferred memory does not change (training
    replays finished buckets only); at the bucket's end it holds exactly the online reservoir's
    contents, slot for slot, with the same bucket tags; a restored state continues the same."""
    capacity = 25
    online, deferred = ReplayBuffer(capacity), ReplayBuffer(capacity)
    r_online, r_deferred = ReservoirRetention(online), ReservoirRetention(deferred, deferred=True)
    g_online, g_deferred = gen(3), gen(3)
    start = 0
    for bucket, batches in enumerate((2, 6, 9)):  # the memory fills in bucket 1, mid-batch
        before = deferred.x[: len(deferred)].clone() if deferred.x is not None else None
        for _ in range(batches):
            x, y = samples(7, start)
            start += 7
            r_online.observe(x, y, bucket, g_online)
            r_deferred.observe(x, y, bucket, g_deferred)
            assert len(deferred) == (0 if before is None else len(before))
            if before is not None:
                assert torch.equal(deferred.x[: len(deferred)], before)
        if bucket == 2:  # a checkpoint mid-bucket keeps the pending writes
            state = r_deferred.state_dict()
            r_deferred = ReservoirRetention(deferred, deferred=True)
            r_deferred.load_state_dict(state)
        r_deferred.end_bucket(bucket, None, "random", g_deferred)
        assert len(deferred) == len(online) == min(capacity, start)
        for column in ("x", "y", "bucket"):
            assert torch.equal(getattr(deferred, column)[: len(online)], getattr(online, column)[: len(online)])
    assert set(deferred.bucket[:capacity].tolist()) == {0, 1, 2}
    assert torch.equal(g_online.get_state(), g_deferred.get_state())


def test_deferred_reservoir_refuses_class_balance():
    with pytest.raises(ValueError, match="online only"):
        ReservoirRetention(ReplayBuffer(5), class_balanced=True, deferred=True)


def test_append_fills_the_next_free_slots_and_refuses_to_overflow():
    buf = ReplayBuffer(5)
    x, y = samples(3)
    buf.append(x, y, bucket=1)
    buf.append(x[:2] + 10, y[:2], bucket=2, priority=0.5)
    assert len(buf) == 5 and buf.x[:, 0].tolist() == [0, 1, 2, 10, 11]
    assert buf.bucket.tolist() == [1, 1, 1, 2, 2] and buf.priority.tolist() == [0, 0, 0, 0.5, 0.5]
    with pytest.raises(ValueError, match="1 samples do not fit: 5 of 5 slots are taken"):
        buf.append(x[:1], y[:1], bucket=3)


def test_class_balanced_reservoir_protects_rare_classes():
    buf = ReplayBuffer(20)
    r = ReservoirRetention(buf, class_balanced=True)
    g = gen()
    x, y = samples(200)
    y = torch.where(torch.arange(200) % 20 == 0, torch.tensor(1), torch.tensor(0))  # class 1 is 5%
    for i in range(0, 200, 10):
        r.observe(x[i:i + 10], y[i:i + 10], 0, g)
    counts = buf.counts_by_class()
    assert len(buf) == 20 and counts[1] == 10 and counts[0] == 10

    plain = ReplayBuffer(20)
    pr = ReservoirRetention(plain)
    for i in range(0, 200, 10):
        pr.observe(x[i:i + 10], y[i:i + 10], 0, g)
    assert plain.counts_by_class().get(1, 0) < 10


def constant_scorer(scores):
    """A model stand-in whose logits make sample i's EL2N grow with scores[i]."""
    def score(x):
        s = scores[x[:, 0].long()]
        return torch.stack([s, torch.zeros_like(s)], dim=1)  # class 0 logit falls as s falls
    return score


def test_bucket_retention_keeps_the_ratio_and_the_hardest():
    buf = ReplayBuffer(100)
    r = BucketRetention(buf, pool_size=1000, ratio=0.05)
    x, y = samples(200, classes=1)
    r.observe(x, y, 0, gen())
    hardness = torch.rand(200, generator=gen(1))
    r.end_bucket(0, constant_scorer(-10 * hardness), "el2n", gen(), bucket_size=200)
    assert len(buf) == 10  # 5% of 200
    kept = set(buf.x[:10, 0].long().tolist())
    assert kept == set(torch.topk(hardness, 10).indices.tolist())


def test_bucket_retention_ignores_repeats_from_several_epochs():
    buf = ReplayBuffer(100)
    r = BucketRetention(buf, pool_size=1000, per_bucket=30)
    x, y = samples(20)
    for _ in range(3):  # three passes over the same 20 samples
        r.observe(x, y, 0, gen())
    r.end_bucket(0, lambda x: torch.zeros(len(x), 10), "random", gen(), bucket_size=20)
    assert len(buf) == 20 and len(set(buf.x[:20, 0].tolist())) == 20


def test_full_memory_is_shared_evenly_and_drops_the_least_valuable():
    buf = ReplayBuffer(30)
    r = BucketRetention(buf, pool_size=100, per_bucket=20)
    hardness = torch.rand(300, generator=gen(1))
    for b in range(3):
        x, y = samples(20, start=100 * b, classes=1)
        r.observe(x, y, b, gen(b))
        r.end_bucket(b, constant_scorer(-10 * hardness), "el2n", gen(b))
        assert len(buf) <= 30
    assert buf.counts_by_bucket() == {0: 10, 1: 10, 2: 10}
    for b in range(3):  # each bucket gave up its easiest samples
        held = set(buf.x[buf.slots(torch.tensor([b])), 0].long().tolist())
        ids = torch.arange(100 * b, 100 * b + 20)
        assert held == set(ids[torch.topk(hardness[ids], 10).indices].tolist())


def test_balanced_quota_water_fills():
    assert balanced_quota({0: 5, 1: 5}, 20) == {0: 5, 1: 5}
    assert balanced_quota({0: 50, 1: 3, 2: 50}, 23) == {0: 10, 1: 3, 2: 10}
    assert balanced_quota({0: 50, 1: 50, 2: 50}, 10) == {0: 3, 1: 3, 2: 4}  # the newest gets the spare


def test_buffer_state_round_trip():
    buf = ReplayBuffer(8)
    x, y = samples(5)
    buf.write(torch.arange(5), x, y, 3, torch.arange(5.0))
    other = ReplayBuffer(8)
    other.load_state_dict(buf.state_dict())
    assert len(other) == 5
    for name in ("y", "bucket", "priority"):
        assert torch.equal(getattr(other, name)[:5], getattr(buf, name)[:5])
    assert torch.equal(other.x[:5], buf.x[:5])


@settings(max_examples=200, deadline=None)
@example(sizes=[196, 231, 231], capacity=657)  # the spare place lands on a group that is then whole
@given(sizes=st.lists(st.integers(0, 300), min_size=1, max_size=12), capacity=st.integers(0, 1000))
def test_balanced_quota_is_full_bounded_and_fair(sizes, capacity):
    groups = dict(enumerate(sizes))
    quota = balanced_quota(groups, capacity)
    assert sum(quota.values()) == min(capacity, sum(sizes))
    assert all(0 <= quota[g] <= n for g, n in groups.items())
    cut = [quota[g] for g, n in groups.items() if quota[g] < n]
    if cut:  # every group that lost samples keeps within one of the others that lost some,
        assert max(cut) - min(cut) <= 1  # and no group keeps more than one past a cut group
        assert all(q <= max(cut) + 1 for q in quota.values())


def test_counts_follow_every_change_of_the_memory():
    buf = ReplayBuffer(6)
    x, y = samples(4)
    buf.append(x, y, bucket=0)
    assert buf.counts_by_bucket() == {0: 4} and buf.counts_by_class() == {0: 1, 1: 1, 2: 1, 3: 1}
    buf.counts_by_bucket()[0] = 99  # a caller's copy: the cached counts stay right
    buf.write(torch.tensor([1]), x[:1], torch.tensor([7]), bucket=3)
    assert buf.counts_by_bucket() == {0: 3, 3: 1} and buf.counts_by_class() == {0: 1, 2: 1, 3: 1, 7: 1}
    buf.keep(torch.tensor([1, 2]))
    assert buf.counts_by_bucket() == {0: 1, 3: 1} and buf.counts_by_class() == {2: 1, 7: 1}


def test_random_selection_keeps_its_draws_without_scoring_the_candidates():
    """Random selection never reads the scores, so the bucket end runs no forward pass over the candidates,
    and keeps exactly the samples its generator draws (the same as when the scores were computed)."""
    calls = []

    def scorer(x):
        calls.append(len(x))
        return torch.zeros(len(x), 10)

    buf = ReplayBuffer(100)
    r = BucketRetention(buf, pool_size=1000, per_bucket=7)
    x, y = samples(40)
    r.observe(x, y, 0, gen())
    r.end_bucket(0, scorer, "random", gen(3))
    assert calls == []
    draws = torch.rand(40, generator=gen(3))
    expected = set(torch.argsort(draws, descending=True, stable=True)[:7].tolist())
    assert set(buf.x[:7, 0].long().tolist()) == expected
    r.observe(*samples(40, start=100), 1, gen())
    r.end_bucket(1, scorer, "el2n", gen())
    assert calls == [40]  # a selection that reads the scores still scores every candidate
