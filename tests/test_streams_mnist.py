"""The GEM paper's MNIST streams, from a tiny mnist.npz in the GEM project's format."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from cl_engine.__main__ import main
from cl_engine.streams import StreamOptions, build_stream

N_TRAIN, N_TEST = 60, 30


def digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    """mnist.npz as Keras ships it (and GEM's raw.py fetches it): uint8 N×28×28, uint8 labels."""
    x_train, y_train = digits(N_TRAIN, 0)
    x_test, y_test = digits(N_TEST, 1)
    # Two test digits that spell out every pixel's index (low byte, high byte), to recover a permutation.
    x_test[0] = (np.arange(784) % 256).reshape(28, 28)
    x_test[1] = (np.arange(784) // 256).reshape(28, 28)
    path = tmp_path_factory.mktemp("mnist") / "mnist.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path, x_train, y_train, x_test, y_test


def stream(kind: str, path, **options):
    return build_stream(f"mnist-{kind}:{path}", StreamOptions(**options))


def everything(s) -> tuple[torch.Tensor, torch.Tensor]:
    return s.batch(torch.arange(len(s)))


def test_defaults_are_the_papers_20_tasks_of_1000_samples(npz):
    path = npz[0]
    s = stream("permuted", path)
    assert len(s) == 20 and s.input_shape == (1, 28, 28) and s.num_classes == 10
    assert s.info["samples_per_task"] == N_TRAIN  # 1000 asked for; the fixture has fewer
    assert all(len(b.test) == N_TEST for b in s.buckets)


def test_permuted_tasks_apply_one_fixed_permutation_each_to_train_and_test(npz):
    path, x_train, y_train, x_test, y_test = npz
    s = stream("permuted", path, num_buckets=3, samples_per_bucket=10)
    original_test = torch.from_numpy(x_test).float().reshape(N_TEST, 784) / 255
    original_train = torch.from_numpy(x_train).float().reshape(N_TRAIN, 784) / 255
    perms = []
    for bucket in s.buckets:
        x, y = everything(bucket.test)
        flat = (x.reshape(N_TEST, 784) * 255).round().long()
        perm = flat[1] * 256 + flat[0]  # the source pixel of every position
        assert sorted(perm.tolist()) == list(range(784))
        assert torch.equal(x.reshape(N_TEST, 784), original_test[:, perm])
        assert torch.equal(y, torch.from_numpy(y_test).long())
        xt, yt = everything(bucket.train)
        assert len(bucket.train) == 10
        for row, label in zip(xt.reshape(-1, 784), yt):  # every training digit is a permuted original, label kept
            source = (original_train[:, perm] == row).all(dim=1).nonzero().flatten()
            assert len(source) == 1 and int(y_train[source[0]]) == int(label)
        perms.append(perm)
    assert not torch.equal(perms[0], torch.arange(784)), "GEM permutes the first task too"
    assert not torch.equal(perms[0], perms[1]) and not torch.equal(perms[1], perms[2])


def test_rotated_tasks_grow_from_0_to_180_degrees(npz):
    path, _, _, x_test, _ = npz
    s = stream("rotated", path, num_buckets=4, samples_per_bucket=5)
    angles = s.info["angles"]
    for t, angle in enumerate(angles):
        assert 45 * t <= angle < 45 * (t + 1)
    originals = torch.from_numpy(x_test).float().unsqueeze(1) / 255
    for bucket, angle in zip(s.buckets, angles):
        x, _ = everything(bucket.test)
        assert torch.equal(x, TF.rotate(originals, angle, interpolation=TF.InterpolationMode.NEAREST))
        assert len(bucket.train) == 5


def test_a_late_task_is_turned_round(tmp_path):
    """A bright spot near the top-left ends near the bottom-right after rotating by about 180°."""
    x = np.zeros((4, 28, 28), dtype=np.uint8)
    x[:, 2:5, 2:5] = 255
    y = np.arange(4, dtype=np.uint8)
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y)
    s = stream("rotated", path, num_buckets=20)
    assert s.info["angles"][-1] >= 171
    image, _ = s.buckets[-1].test.batch(torch.tensor([0]))
    rows, cols = image[0, 0].nonzero(as_tuple=True)
    assert rows.float().mean() > 20 and cols.float().mean() > 20


def test_same_seed_same_stream_other_seed_other_stream(npz):
    path = npz[0]
    a, b = stream("permuted", path, num_buckets=2, samples_per_bucket=5, seed=3), \
        stream("permuted", path, num_buckets=2, samples_per_bucket=5, seed=3)
    c = stream("permuted", path, num_buckets=2, samples_per_bucket=5, seed=4)
    assert torch.equal(everything(a.buckets[1].train)[0], everything(b.buckets[1].train)[0])
    assert not torch.equal(everything(a.buckets[1].train)[0], everything(c.buckets[1].train)[0])


def test_the_test_set_can_be_subsampled_the_same_for_every_task(npz):
    path = npz[0]
    s = stream("rotated", path, num_buckets=3, test_samples_per_bucket=7)
    assert [len(b.test) for b in s.buckets] == [7, 7, 7]
    assert torch.equal(s.buckets[0].test.labels, s.buckets[2].test.labels)


def test_flattened_and_float_files_are_read_too(tmp_path, npz):
    _, x_train, y_train, x_test, y_test = npz
    path = tmp_path / "flat.npz"
    np.savez(path, x_train=x_train.reshape(-1, 784).astype(np.float32) / 255, y_train=y_train.astype(np.int64),
             x_test=x_test.reshape(-1, 784), y_test=y_test)
    flat = stream("permuted", path, num_buckets=2, samples_per_bucket=5)
    same = stream("permuted", npz[0], num_buckets=2, samples_per_bucket=5)
    for a, b in zip(flat.buckets, same.buckets):
        assert torch.equal(everything(a.train)[0], everything(b.train)[0])
        assert torch.equal(everything(a.test)[0], everything(b.test)[0])


def test_a_missing_file_names_the_path_and_the_expected_arrays(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.npz.*x_train, y_train, x_test, y_test.*mnist.npz"):
        stream("permuted", tmp_path / "nowhere.npz")


def test_a_file_without_the_gem_arrays_says_what_it_lacks(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, x_train=np.zeros((2, 28, 28), np.uint8), y_train=np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match=r"lacks x_test, y_test"):
        stream("rotated", path)
    np.savez(path, x_train=np.zeros((2, 32, 32), np.uint8), y_train=np.zeros(2, np.uint8),
             x_test=np.zeros((2, 28, 28), np.uint8), y_test=np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match=r"x_train has shape \(2, 32, 32\); expected N×28×28 or N×784"):
        stream("rotated", path)


def test_end_to_end_permuted(npz, tmp_path):
    report_path = tmp_path / "report.json"
    assert main(["run", "--dataset", f"mnist-permuted:{npz[0]}", "--buckets", "3", "--samples-per-bucket", "20",
                 "--model", "mlp", "--strategy", "gem", "--memory-per-bucket", "5", "--batch-size", "10",
                 "--device", "cpu", "--report", str(report_path), "--quiet"]) == 0
    report = json.loads(report_path.read_text())
    matrix = report["accuracy_matrix"]
    assert len(matrix) == 3 and all(len(row) == 3 and None not in row for row in matrix)
    assert report["stream"]["train_sizes"] == [20, 20, 20] and report["stream"]["test_sizes"] == [N_TEST] * 3
