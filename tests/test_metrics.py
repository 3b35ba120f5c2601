"""Both metric families and forgetting, against values computed by hand."""
import math

import numpy as np
import pytest

from cl_engine.metrics import AccuracyMatrix, PrequentialWindow, clear_metrics, forgetting_per_bucket, gem_metrics

R = np.array([[0.8, 0.3, 0.2],
              [0.6, 0.9, 0.4],
              [0.5, 0.7, 0.95]])
B = np.array([0.1, 0.15, 0.05])


def test_gem_family():
    m = gem_metrics(R, B)
    assert m["acc"] == pytest.approx((0.5 + 0.7 + 0.95) / 3)
    assert m["bwt"] == pytest.approx(((0.5 - 0.8) + (0.7 - 0.9)) / 2)
    assert m["fwt"] == pytest.approx(((0.3 - 0.15) + (0.4 - 0.05)) / 2)


def test_clear_family():
    m = clear_metrics(R)
    in_domain = (0.8 + 0.9 + 0.95) / 3
    next_domain = (0.3 + 0.4) / 2
    bwt = (0.6 + 0.5 + 0.7) / 3
    fwt = (0.3 + 0.2 + 0.4) / 3
    assert m["in_domain"] == pytest.approx(in_domain)
    assert m["next_domain"] == pytest.approx(next_domain)
    assert m["clear_acc"] == pytest.approx((0.8 + 0.6 + 0.9 + 0.5 + 0.7 + 0.95) / 6)
    assert m["clear_bwt"] == pytest.approx(bwt)
    assert m["clear_fwt"] == pytest.approx(fwt)
    assert m["clear_score"] == pytest.approx((in_domain + next_domain + bwt + fwt) / 4)


def test_forgetting_is_the_drop_from_the_best_earlier_accuracy():
    assert forgetting_per_bucket(R) == pytest.approx([0.8 - 0.5, 0.9 - 0.7])
    # Bucket 0 kept improving after its own training (0.5 → 0.7) before it fell to 0.4:
    # forgetting counts from that peak, not from the diagonal.
    rising = np.array([[0.5, 0.1, 0.0], [0.7, 0.9, 0.0], [0.4, 0.8, 0.9]])
    assert forgetting_per_bucket(rising) == pytest.approx([0.3, 0.1])


def test_accuracy_matrix_assembles_rows_and_skips_unmeasured_cells():
    am = AccuracyMatrix()
    am.set_initial({0: 0.1, 1: 0.15, 2: 0.05})
    for i, row in enumerate(R):
        am.add_row(i, dict(enumerate(row)))
    np.testing.assert_array_equal(am.matrix(), R)
    s = am.summary()
    assert s["acc"] == pytest.approx(gem_metrics(R, B)["acc"])
    assert s["forgetting"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="expected bucket 3"):
        am.add_row(5, {0: 1.0})

    partial = AccuracyMatrix()
    partial.add_row(0, {0: 0.9})
    partial.add_row(1, {0: 0.7, 1: 0.8})
    assert math.isnan(partial.summary()["fwt"])  # no initial row: forward transfer is unmeasured
    assert partial.summary()["bwt"] == pytest.approx(-0.2)


def test_prequential_window_slides():
    w = PrequentialWindow(window=20)
    w.add(10, 10)
    w.add(0, 10)
    assert w.accuracy == pytest.approx(0.5)
    w.add(10, 10)  # the first batch leaves the window
    assert w.accuracy == pytest.approx(0.5) and w.in_window[1] == 20
    w.add(10, 10)
    assert w.accuracy == 1.0
    assert w.overall_accuracy == pytest.approx(30 / 40)


def test_buckets_without_held_out_sets_give_nan_not_an_error():
    am = AccuracyMatrix()
    am.add_row(0, {})
    am.add_row(1, {})
    summary = am.summary()
    assert all(math.isnan(v) for v in summary.values())
    am.add_row(2, {0: 0.5})  # a set registered for bucket 0 only, after two buckets
    assert am.summary()["acc"] == 0.5 and math.isnan(am.summary()["bwt"])
