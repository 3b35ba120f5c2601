"""The learning rate of each step: constant, or cosine annealing over each bucket (the CLEAR study's).

Cosine: step k (0-based, counting every batch of the bucket over all its epochs) of a bucket planned
as T batches trains at lr·(1 + cos(πk/T))/2, the closed form of torch's CosineAnnealingLR(T_max=T,
eta_min=0) stepped once per batch; it restarts at lr with every bucket. The learner must know T before
the bucket's first batch: the in-process run tells it, a replay client declares it on each batch
(TrainBatch.bucket_batches).
"""
from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine")


def lr_at(schedule: str, base: float, step: int, steps: int | None) -> float:
    if schedule == "constant":
        return base
    if schedule != "cosine":
        raise ValueError(f"lr schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if not steps:
        raise ValueError("the cosine learning-rate schedule needs the bucket's planned batch count before its first "
                         "batch, and none was given")
    return base * (1 + math.cos(math.pi * step / steps)) / 2
