"""CIFAR-100 split into buckets of classes, from a tiny copy of the python pickle release."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from cl_engine.__main__ import main
from cl_engine.streams import StreamOptions, build_stream

TRAIN_PER_CLASS, TEST_PER_CLASS = 3, 1


def write_part(path, per_class: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = [c for c in range(100) for _ in range(per_class)]
    rng.shuffle(labels)  # the release's files are not sorted by class either
    data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
    data[:, :1024] = np.array(labels, dtype=np.uint8)[:, None]  # the red plane tells the label
    data[:, 1024:2048] = 200
    data[:, 2048:] = 7
    # As the release: a protocol-2 pickle with byte-string keys.
    d = {b"filenames": [b"x.png"] * len(labels), b"batch_label": b"training batch 1 of 1",
         b"fine_labels": labels, b"coarse_labels": [c // 5 for c in labels], b"data": data}
    path.write_bytes(pickle.dumps(d, protocol=2))


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cifar") / "cifar-100-python"
    folder.mkdir()
    write_part(folder / "train", TRAIN_PER_CLASS, 0)
    write_part(folder / "test", TEST_PER_CLASS, 1)
    meta = {b"fine_label_names": [f"class{c:02d}".encode() for c in range(100)],
            b"coarse_label_names": [f"super{c:02d}".encode() for c in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def cifar(path, **options):
    return build_stream(f"cifar100-split:{path}", StreamOptions(**options))


def test_twenty_buckets_of_five_classes_in_label_order(release):
    s = cifar(release)
    assert len(s) == 20 and s.input_shape == (3, 32, 32) and s.num_classes == 100
    assert s.class_names[0] == "class00" and s.class_names[99] == "class99"
    for t, bucket in enumerate(s.buckets):
        classes = set(range(5 * t, 5 * t + 5))
        assert set(bucket.train.labels.tolist()) == classes and set(bucket.test.labels.tolist()) == classes
        assert (len(bucket.train), len(bucket.test)) == (5 * TRAIN_PER_CLASS, 5 * TEST_PER_CLASS)
    assert s.info["bucket_classes"][1] == [5, 6, 7, 8, 9]


def test_pixels_are_channel_planes_scaled_to_0_1(release):
    bucket = cifar(release).buckets[3]
    x, y = bucket.train.batch(torch.arange(len(bucket.train)))
    assert x.shape == (len(y), 3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], (y.float() / 255).view(-1, 1, 1).expand(-1, 32, 32))  # red plane = label
    assert torch.all(x[:, 1] == 200 / 255) and torch.all(x[:, 2] == 7 / 255)


def test_shuffled_class_order_is_a_seeded_partition(release):
    a, b = cifar(release, class_order="shuffled", seed=1), cifar(release, class_order="shuffled", seed=1)
    c = cifar(release, class_order="shuffled", seed=2)
    assert a.info["bucket_classes"] == b.info["bucket_classes"] != c.info["bucket_classes"]
    assert a.info["bucket_classes"] != cifar(release).info["bucket_classes"]
    assert sorted(k for group in a.info["bucket_classes"] for k in group) == list(range(100))
    for bucket, classes in zip(a.buckets, a.info["bucket_classes"]):
        assert set(bucket.train.labels.tolist()) == set(classes)


def test_bucket_count_and_subsets(release):
    s = cifar(release, num_buckets=10, samples_per_bucket=12, test_samples_per_bucket=4)
    assert len(s) == 10 and [len(b.train) for b in s.buckets] == [12] * 10 and [len(b.test) for b in s.buckets] == [4] * 10
    with pytest.raises(ValueError, match="divides the 100 classes, got 7"):
        cifar(release, num_buckets=7)


def test_missing_release_says_what_to_get(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*train, test and meta.*cs.toronto.edu/~kriz/cifar.html"):
        cifar(tmp_path / "nowhere")
    (tmp_path / "cifar-100-python").mkdir()
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python/train is missing"):
        cifar(tmp_path / "cifar-100-python")


class Boom:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path, release, capsys):
    folder = tmp_path / "evil"
    folder.mkdir()
    for name in ("test", "meta"):
        (folder / name).write_bytes((release / name).read_bytes())
    (folder / "train").write_bytes(pickle.dumps({b"data": Boom(), b"fine_labels": []}, protocol=2))
    with pytest.raises(ValueError, match=r"refusing to load (__builtin__|builtins).print"):
        cifar(folder)
    assert "must never run" not in capsys.readouterr().out


def test_end_to_end_split(release, tmp_path):
    report_path = tmp_path / "report.json"
    assert main(["run", "--dataset", f"cifar100-split:{release}", "--model", "mlp", "--strategy", "replay",
                 "--buffer-capacity", "50", "--batch-size", "10", "--device", "cpu",
                 "--report", str(report_path), "--quiet"]) == 0
    report = json.loads(report_path.read_text())
    matrix = report["accuracy_matrix"]
    assert len(matrix) == 20 and all(len(row) == 20 and None not in row for row in matrix)
