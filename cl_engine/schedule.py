"""The order in which a bucket's samples are trained, shared by the in-process run and the replay
client so that both feed the model identical batches.

`within="shuffled"` (the default, as the CLEAR paper treats a bucket as iid and Avalanche shuffles
an experience): every pass over a bucket, the first too, is a fresh permutation drawn from a
generator seeded by (seed, bucket, pass), so runs are reproducible. `within="upload-time"` (a live
stream's simulation): the first pass keeps the stream's own order, which is upload time for a stream
whose samples are dated (`check_within` refuses it for one that is not); further passes are
shuffled as above.
"""
from __future__ import annotations

from typing import Iterator

import torch

WITHIN = ("shuffled", "upload-time")


def check_within(within: str, stream_name: str, undated: int | None) -> None:
    """ValueError unless `within` can be honoured for a stream with `undated` samples lacking an upload
    date (None: the stream has no upload dates at all)."""
    if within not in WITHIN:
        raise ValueError(f"--within-bucket must be one of {', '.join(WITHIN)}, got {within!r}")
    if within == "upload-time" and undated != 0:
        what = "has no upload dates" if undated is None else f"has {undated} samples without an upload date"
        raise ValueError(f"--within-bucket upload-time trains each bucket's first pass in upload order, but stream "
                         f"{stream_name} {what}; use --within-bucket shuffled")


def pass_order(n: int, seed: int, bucket: int, epoch: int, within: str = "shuffled") -> torch.Tensor:
    if epoch == 0 and within == "upload-time":
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed * 1_000_003 + bucket * 1_009 + epoch)
    return torch.randperm(n, generator=g)


def bucket_batches(n: int, batch_size: int, epochs: int, seed: int, bucket: int,
                   within: str = "shuffled") -> Iterator[torch.Tensor]:
    """Index tensors of each batch of a bucket of n samples, over `epochs` passes."""
    if batch_size < 1 or epochs < 1:
        raise ValueError(f"batch size and epochs must be >= 1, got {batch_size} and {epochs}")
    for epoch in range(epochs):
        order = pass_order(n, seed, bucket, epoch, within)
        yield from torch.split(order, batch_size)


def batches_per_bucket(n: int, batch_size: int, epochs: int) -> int:
    return epochs * -(-n // batch_size)
