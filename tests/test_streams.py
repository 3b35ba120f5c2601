"""The embedded digits streams and the user's own buckets-npz file."""
import numpy as np
import pytest
import torch

from cl_engine.streams import StreamOptions, build_stream


def all_of(sample_set):
    return sample_set.batch(torch.arange(len(sample_set)))


@pytest.mark.parametrize("name", ["digits-rotated", "digits-permuted", "digits-split"])
def test_digits_streams_have_disjoint_train_and_test(name):
    stream = build_stream(name)
    assert len(stream) == 5 and stream.input_shape == (1, 8, 8) and stream.num_classes == 10
    total_test = 0
    for bucket in stream.buckets:
        xtr, _ = all_of(bucket.train)
        xte, _ = all_of(bucket.test)
        assert xtr.shape[1:] == (1, 8, 8) and 0 <= xtr.min() and xtr.max() <= 1
        train_rows = {tuple(r) for r in xtr.flatten(1).tolist()}
        assert not any(tuple(r) in train_rows for r in xte.flatten(1).tolist())
        total_test += len(bucket.test)
    if name == "digits-split":
        assert total_test == round(1797 * 0.3)
        assert [sorted(b.train.labels.unique().tolist()) for b in stream.buckets] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]


def test_rotation_grows_bucket_by_bucket():
    stream = build_stream("digits-rotated", StreamOptions(num_buckets=4))
    assert stream.info["angles"] == [0, 45, 90, 135]
    x0, _ = all_of(stream.buckets[0].test)
    x2, _ = all_of(stream.buckets[2].test)
    # 90° is an exact rotation of the 8×8 grid: bucket 2 is bucket 0 turned a quarter (counterclockwise).
    torch.testing.assert_close(x2, torch.rot90(x0, 1, dims=(2, 3)), atol=1e-5, rtol=0)


def test_iid_order_reshuffles_the_same_training_samples():
    time_order = build_stream("digits-permuted")
    iid = build_stream("digits-permuted", order="iid")
    assert [len(b.train) for b in iid.buckets] == [len(b.train) for b in time_order.buckets]
    labels = torch.cat([b.train.labels for b in iid.buckets])
    assert torch.equal(labels.sort().values, torch.cat([b.train.labels for b in time_order.buckets]).sort().values)
    first = set(map(tuple, all_of(iid.buckets[0].train)[0].flatten(1).tolist()))
    sources = [set(map(tuple, all_of(b.train)[0].flatten(1).tolist())) for b in time_order.buckets]
    assert sum(bool(first & s) for s in sources) == 5  # an iid bucket mixes every time bucket
    assert torch.equal(all_of(iid.buckets[3].test)[0], all_of(time_order.buckets[3].test)[0])


def write_npz(path, n_buckets=3, image=(6, 6), dtype=np.uint8, channels=None, **drop):
    rng = np.random.default_rng(0)
    arrays = {}
    for t in range(n_buckets):
        for part, n in (("train", 20), ("test", 8)):
            shape = (n, *((channels,) if channels else ()), *image)
            x = rng.integers(0, 256, shape).astype(dtype) if dtype == np.uint8 else rng.random(shape).astype(dtype)
            arrays[f"{part}_x_{t}"] = x
            arrays[f"{part}_y_{t}"] = rng.integers(0, 4, n)
    for key in drop:
        arrays.pop(key)
    np.savez(path, **arrays)
    return arrays


def test_buckets_npz_reads_single_channel_uint8(tmp_path):
    arrays = write_npz(tmp_path / "s.npz")
    stream = build_stream(f"buckets-npz:{tmp_path / 's.npz'}")
    assert len(stream) == 3 and stream.input_shape == (1, 6, 6)
    assert stream.num_classes == 4
    x, y = all_of(stream.buckets[1].train)
    torch.testing.assert_close(x[:, 0], torch.from_numpy(arrays["train_x_1"] / 255.0).float())
    assert torch.equal(y, torch.from_numpy(arrays["train_y_1"]))


def test_buckets_npz_reads_multichannel_float(tmp_path):
    write_npz(tmp_path / "s.npz", channels=3, dtype=np.float32)
    stream = build_stream(f"buckets-npz:{tmp_path / 's.npz'}")
    assert stream.input_shape == (3, 6, 6)


@pytest.mark.parametrize("drop,message", [
    ({"test_y_1": 1}, "bucket 1 lacks test_y_1"),
    ({"train_x_1": 1, "train_y_1": 1, "test_x_1": 1, "test_y_1": 1}, "not numbered 0..1"),
])
def test_buckets_npz_names_what_is_missing(tmp_path, drop, message):
    write_npz(tmp_path / "s.npz", **drop)
    with pytest.raises(ValueError, match=message):
        build_stream(f"buckets-npz:{tmp_path / 's.npz'}")


def test_buckets_npz_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected one .npz with arrays train_x_<t>"):
        build_stream(f"buckets-npz:{tmp_path / 'missing.npz'}")
    with pytest.raises(ValueError, match="needs a path"):
        build_stream("buckets-npz")
    with pytest.raises(ValueError, match="unknown dataset 'nope'; expected one of"):
        build_stream("nope")
    np.savez(tmp_path / "bad.npz", train_x_0=np.zeros((2, 3, 3), np.uint8), train_y_0=np.array([0, 5]),
             test_x_0=np.zeros((1, 4, 4), np.uint8), test_y_0=np.array([0]))
    with pytest.raises(ValueError, match="every bucket must share one shape"):
        build_stream(f"buckets-npz:{tmp_path / 'bad.npz'}")
