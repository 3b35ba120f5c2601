"""The embedded default: scikit-learn's bundled handwritten digits (1,797 real 8×8 scans, no download).

Three streams in the image of the GEM paper's MNIST benchmarks:
- digits-rotated: bucket t is every digit rotated by t·max_angle/n degrees (gradual domain drift),
- digits-permuted: bucket t applies its own fixed pixel permutation (abrupt domain shifts),
- digits-split: class-incremental, bucket t holds the classes 2t and 2t+1.
One stratified 70/30 split is drawn first, so no test digit is ever trained on in any bucket.
"""
from __future__ import annotations

import torch

from .base import Bucket, Stream, TensorSet

TEST_FRACTION = 0.3


def load_digits_split(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The digits as float32 [N, 1, 8, 8] in [0, 1], split 70/30 per class with a fixed seed."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    g = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for c in range(10):
        members = (y == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=g)]
        n_test = round(len(members) * TEST_FRACTION)
        test_idx.append(members[:n_test])
        train_idx.append(members[n_test:])
    train = torch.cat(train_idx)
    train = train[torch.randperm(len(train), generator=g)]
    test = torch.cat(test_idx)
    return x[train], y[train], x[test], y[test]


def _subsample(x: torch.Tensor, y: torch.Tensor, n: int | None, g: torch.Generator):
    if n is None or n >= len(y):
        return x, y
    keep = torch.randperm(len(y), generator=g)[:n]
    return x[keep], y[keep]


def digits_rotated(num_buckets: int = 5, max_angle: float = 180.0, samples_per_bucket: int | None = None,
                   seed: int = 0) -> Stream:
    from torchvision.transforms.v2 import functional as TF  # slow to import; only this stream needs it

    xtr, ytr, xte, yte = load_digits_split(seed)
    g = torch.Generator().manual_seed(seed + 1)
    buckets = []
    angles = [max_angle * t / num_buckets for t in range(num_buckets)]
    for t, angle in enumerate(angles):
        bx, by = _subsample(xtr, ytr, samples_per_bucket, g)
        rotate = lambda im: TF.rotate(im, angle, interpolation=TF.InterpolationMode.BILINEAR)  # noqa: E731
        buckets.append(Bucket(TensorSet(rotate(bx), by), TensorSet(rotate(xte), yte), f"rotated {angle:g}°"))
    return Stream("digits-rotated", buckets, (1, 8, 8), 10, info={"angles": angles, "seed": seed}, value_range=(0.0, 1.0))


def digits_permuted(num_buckets: int = 5, samples_per_bucket: int | None = None, seed: int = 0) -> Stream:
    xtr, ytr, xte, yte = load_digits_split(seed)
    g = torch.Generator().manual_seed(seed + 1)
    buckets = []
    for t in range(num_buckets):
        perm = torch.randperm(64, generator=g)
        bx, by = _subsample(xtr, ytr, samples_per_bucket, g)
        permute = lambda im: im.reshape(-1, 64)[:, perm].reshape(-1, 1, 8, 8)  # noqa: E731
        buckets.append(Bucket(TensorSet(permute(bx), by), TensorSet(permute(xte), yte), f"permutation {t}"))
    return Stream("digits-permuted", buckets, (1, 8, 8), 10, info={"seed": seed}, value_range=(0.0, 1.0))


def digits_split(num_buckets: int = 5, samples_per_bucket: int | None = None, seed: int = 0) -> Stream:
    if 10 % num_buckets:
        raise ValueError(f"digits-split needs a bucket count that divides the 10 classes, got {num_buckets}")
    xtr, ytr, xte, yte = load_digits_split(seed)
    g = torch.Generator().manual_seed(seed + 1)
    per = 10 // num_buckets
    buckets = []
    for t in range(num_buckets):
        classes = list(range(t * per, (t + 1) * per))
        tr = torch.isin(ytr, torch.tensor(classes))
        te = torch.isin(yte, torch.tensor(classes))
        bx, by = _subsample(xtr[tr], ytr[tr], samples_per_bucket, g)
        buckets.append(Bucket(TensorSet(bx, by), TensorSet(xte[te], yte[te]), "classes " + ",".join(map(str, classes))))
    return Stream("digits-split", buckets, (1, 8, 8), 10, info={"seed": seed}, value_range=(0.0, 1.0))
