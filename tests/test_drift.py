"""Page-Hinkley on an error stream: quiet on stationary streams, quick on a jump, blind to falls."""
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cl_engine.drift import PageHinkley


def bernoulli_batches(rng, p, batches, size=10):
    for _ in range(batches):
        yield sum(rng.random() < p for _ in range(size)) / size, size


def test_by_hand():
    d = PageHinkley(delta=0.0, threshold=1.0, min_samples=1)
    # x = 0, 0, 1: means 0, 0, 1/3; cumulative 0, 0, 2/3; minimum 0
    assert not d.update(0.0) and not d.update(0.0)
    assert not d.update(1.0)
    assert d.statistic == pytest.approx(2 / 3)
    assert d.update(1.0)  # mean 1/2, cumulative 2/3 + 1/2 = 7/6 > 1
    assert d.events == 1 and d.last_event_at == 4 and d.n == 0 and d.statistic == 0.0


def test_weight_is_that_many_observations():
    a, b = PageHinkley(), PageHinkley()
    for x, w in [(0.2, 7), (0.9, 3), (0.4, 5)]:
        a.update(x, w)
        for _ in range(w):
            b.update(x)
    assert a.state_dict() == b.state_dict()


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5])
def test_stationary_stream_raises_no_alarm(p):
    rng = random.Random(1)
    d = PageHinkley()
    assert not any(d.update(x, n) for x, n in bernoulli_batches(rng, p, 3000))
    assert d.events == 0


def test_a_jump_in_error_is_flagged_soon():
    rng = random.Random(2)
    d = PageHinkley()
    for x, n in bernoulli_batches(rng, 0.1, 300):
        assert not d.update(x, n)
    for i, (x, n) in enumerate(bernoulli_batches(rng, 0.5, 200)):
        if d.update(x, n):
            break
    else:
        pytest.fail("no alarm within 2000 samples of a jump from 10% to 50% error")
    assert (i + 1) * 10 <= 100 / (0.4 - 0.01) * 1.5  # about λ / (Δ − δ) samples
    assert d.events == 1


def test_falling_error_never_alarms():
    d = PageHinkley(threshold=5.0)
    for t in range(2000):
        assert not d.update(max(0.0, 0.9 - t / 1000))


def test_min_samples_holds_back_the_first_alarm():
    d = PageHinkley(delta=0.0, threshold=0.5, min_samples=50)
    alarms = [d.update(0.0 if t < 5 else 1.0) for t in range(60)]
    assert alarms.index(True) == 49


def test_fading_factor_bounds_the_sum():
    d = PageHinkley(alpha=0.9, threshold=1e9)
    for _ in range(1000):
        d.update(0.0)
    assert abs(d.cumulative) <= 0.01 / (1 - 0.9) + 1e-9


def test_state_round_trip_continues_identically():
    rng = random.Random(3)
    stream = list(bernoulli_batches(rng, 0.2, 50)) + list(bernoulli_batches(rng, 0.7, 100))
    a = PageHinkley()
    for x, n in stream[:60]:
        a.update(x, n)
    b = PageHinkley(delta=0.5, threshold=1.0)
    b.load_state_dict(a.state_dict())
    assert [a.update(x, n) for x, n in stream[60:]] == [b.update(x, n) for x, n in stream[60:]]
    assert a.state_dict() == b.state_dict()


@pytest.mark.parametrize("kwargs", [{"delta": -1}, {"threshold": 0}, {"min_samples": 0}, {"alpha": 0},
                                    {"alpha": 1.5}, {"delta": math.nan}])
def test_bad_parameters_are_refused(kwargs):
    with pytest.raises(ValueError):
        PageHinkley(**kwargs)


@pytest.mark.parametrize("x,w", [(math.nan, 1), (math.inf, 1), (0.5, 0)])
def test_bad_observations_are_refused_and_change_nothing(x, w):
    d = PageHinkley()
    d.update(0.3, 5)
    before = d.state_dict()
    with pytest.raises(ValueError):
        d.update(x, w)
    assert d.state_dict() == before


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.integers(1, 20)), max_size=60))
def test_statistic_is_never_negative_and_a_constant_stream_never_alarms(stream):
    d = PageHinkley(threshold=3.0, min_samples=1)
    for x, w in stream:
        d.update(x, w)
        assert d.statistic >= 0
    c = PageHinkley(threshold=1e-6, min_samples=1)
    assert not any(c.update(0.37, 3) for _ in range(100))
