"""The order in which a bucket's samples are trained, shared by the in-process run and the replay
client so that both feed the model identical batches.

The first pass over a bucket keeps the stream's own (time) order; every further pass is a fresh
permutation drawn from a generator seeded by (seed, bucket, pass), so runs are reproducible.
"""
from __future__ import annotations

from typing import Iterator

import torch


def pass_order(n: int, seed: int, bucket: int, epoch: int) -> torch.Tensor:
    if epoch == 0:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed * 1_000_003 + bucket * 1_009 + epoch)
    return torch.randperm(n, generator=g)


def bucket_batches(n: int, batch_size: int, epochs: int, seed: int, bucket: int) -> Iterator[torch.Tensor]:
    """Index tensors of each batch of a bucket of n samples, over `epochs` passes."""
    if batch_size < 1 or epochs < 1:
        raise ValueError(f"batch size and epochs must be >= 1, got {batch_size} and {epochs}")
    for epoch in range(epochs):
        order = pass_order(n, seed, bucket, epoch)
        yield from torch.split(order, batch_size)


def batches_per_bucket(n: int, batch_size: int, epochs: int) -> int:
    return epochs * -(-n // batch_size)
