"""The networks a learner can hold, by name."""
from __future__ import annotations

from torch import nn

from .linear import linear
from .mlp import mlp
from .reduced_resnet18 import reduced_resnet18
from .resnet18 import resnet18

MODELS = {"mlp": mlp, "linear": linear, "resnet18": resnet18, "reduced-resnet18": reduced_resnet18}


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    return MODELS[name](tuple(input_shape), num_classes)
