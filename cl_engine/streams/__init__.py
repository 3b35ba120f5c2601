"""Datasets replayed as time-ordered streams, named by a spec string such as `digits-rotated`,
`buckets-npz:/data/my.npz` or `clear:/data/clear10`. docs/datasets.md says where each
dataset is published and which file or folder PATH names."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import (Bucket, ConcatSet, SampleSet, ScaledSet, Stream, StoredSet, SubsetSet, TensorSet, iid_buckets,
                   stored_batch, stored_files)
from .cifar100 import cifar100_split
from .clear import clear_stream
from .digits import digits_permuted, digits_rotated, digits_split
from .mnist import mnist_permuted, mnist_rotated
from .npz import buckets_npz


@dataclass
class StreamOptions:
    """Knobs that some streams take; each stream ignores the ones that mean nothing to it."""

    num_buckets: int | None = None
    samples_per_bucket: int | None = None
    test_samples_per_bucket: int | None = None  # mnist-*, cifar100-split: a seeded subset of each test set
    seed: int = 0
    # CLEAR (clear.py says what each means)
    clear_mode: str = "images"  # images | features
    protocol: str = "streaming"  # streaming | iid
    split_seed: int = 0  # the NeurIPS 2021 release's testset_ratio_0.3/split_<seed>
    image_size: int = 224
    clear_features: str = "moco_b0"  # features/<type>; the NeurIPS 2021 release has more types
    # cifar100-split
    class_order: str = "label"  # label | shuffled (seeded by `seed`)


def _digits(builder):
    def build(path: str | None, o: StreamOptions) -> Stream:
        kwargs = {"seed": o.seed, "samples_per_bucket": o.samples_per_bucket}
        if o.num_buckets is not None:
            kwargs["num_buckets"] = o.num_buckets
        return builder(**kwargs)
    return build


def _gem_mnist(builder):
    def build(path: str | None, o: StreamOptions) -> Stream:
        return builder(path, num_tasks=20 if o.num_buckets is None else o.num_buckets,
                       samples_per_task=o.samples_per_bucket if o.samples_per_bucket is not None else 1000,
                       test_samples=o.test_samples_per_bucket, seed=o.seed)
    return build


def _clear(path: str | None, o: StreamOptions) -> Stream:
    return clear_stream(path, mode=o.clear_mode, protocol=o.protocol, split_seed=o.split_seed,
                        image_size=o.image_size, feature_type=o.clear_features)


def _cifar100(path: str | None, o: StreamOptions) -> Stream:
    return cifar100_split(path, num_buckets=20 if o.num_buckets is None else o.num_buckets,
                          class_order=o.class_order, samples_per_bucket=o.samples_per_bucket,
                          test_samples_per_bucket=o.test_samples_per_bucket, seed=o.seed)


BUILDERS = {
    "digits-rotated": (_digits(digits_rotated), False),
    "digits-permuted": (_digits(digits_permuted), False),
    "digits-split": (_digits(digits_split), False),
    "buckets-npz": (lambda path, o: buckets_npz(path), True),
    "clear": (_clear, True),
    "mnist-permuted": (_gem_mnist(mnist_permuted), True),
    "mnist-rotated": (_gem_mnist(mnist_rotated), True),
    "cifar100-split": (_cifar100, True),
}


def build_stream(spec: str, options: StreamOptions | None = None, order: str = "time") -> Stream:
    """The stream named by `spec` ("NAME" or "NAME:PATH"), in `order` "time" or "iid"."""
    options = options or StreamOptions()
    for flag, value in (("--buckets", options.num_buckets), ("--samples-per-bucket", options.samples_per_bucket),
                        ("--test-samples-per-bucket", options.test_samples_per_bucket),
                        ("--image-size", options.image_size)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    name, _, path = spec.partition(":")
    if name not in BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(sorted(BUILDERS))}")
    builder, needs_path = BUILDERS[name]
    if needs_path and not path:
        raise ValueError(f"dataset {name} needs a path: {name}:PATH")
    if not needs_path and path:
        raise ValueError(f"dataset {name} takes no path, got {spec!r}")
    stream = builder(path or None, options)
    if order == "iid":
        return iid_buckets(stream, torch.Generator().manual_seed(options.seed))
    if order != "time":
        raise ValueError(f"unknown order {order!r}; expected 'time' or 'iid'")
    return stream


__all__ = [
    "Bucket", "ConcatSet", "SampleSet", "ScaledSet", "StoredSet", "Stream", "StreamOptions", "SubsetSet", "TensorSet",
    "build_stream", "iid_buckets", "stored_batch", "stored_files", "BUILDERS",
]
