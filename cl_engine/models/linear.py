"""A linear probe, as in CLEAR's protocol on pre-extracted (MoCo) features."""
from __future__ import annotations

import math

from torch import nn


def linear(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))
