"""A schema declared by a first client is bounded before anything is allocated for it.

The server checks a client's first schema against three settings, in this order, before it decodes
a sample or builds a model:

- `max_sample_values`: values in one sample (the product of input_shape); INVALID_ARGUMENT;
- `max_classes`: class names; INVALID_ARGUMENT (each class is also a label of per-class metrics);
- `max_model_bytes`: the configured model's parameters for that schema, as float32, counted on
  PyTorch's meta device (no memory behind it); RESOURCE_EXHAUSTED. Training holds about four times
  this (the parameters, their gradients, the optimizer's momentum, the serving snapshot).

A forward pass on the meta device then checks that the model can train on samples of that shape at
all (INVALID_ARGUMENT otherwise) and finds the fewest samples a Train batch must hold: 2 where batch
normalisation would otherwise see a single value per channel.
"""
from __future__ import annotations

import functools
import math

import torch

from cl_engine.models import build_model

from .errors import InvalidArgument, ResourceExhausted
from .schema import Schema

MiB = 1024 * 1024


@functools.lru_cache(maxsize=64)
def parameter_count(model: str, input_shape: tuple[int, ...], num_classes: int) -> int:
    """How many parameters `model` has for this schema, without allocating them; ValueError when the
    model cannot take the schema."""
    with torch.device("meta"):
        net = build_model(model, input_shape, num_classes)
    return sum(p.numel() for p in net.parameters())


@functools.lru_cache(maxsize=64)
def min_train_batch(model: str, input_shape: tuple[int, ...], num_classes: int) -> int:
    """The fewest samples a training step of `model` takes (2 where batch normalisation would see one
    value per channel), found by a forward pass on the meta device; ValueError (or RuntimeError) when
    not even two samples of this shape go through the model."""
    with torch.device("meta"):
        net = build_model(model, input_shape, num_classes).train()
        for n in (1, 2):
            try:
                net(torch.empty((n, *input_shape)))
                return n
            except ValueError:
                if n == 2:
                    raise
    raise AssertionError("unreachable")


class SchemaBounds:
    def __init__(self, model: str, max_sample_values: int, max_classes: int, max_model_bytes: int):
        self.model = model
        self.max_sample_values = max_sample_values
        self.max_classes = max_classes
        self.max_model_bytes = max_model_bytes

    def check(self, schema: Schema, field: str = "schema") -> None:
        values = math.prod(schema.input_shape)
        if values > self.max_sample_values:
            raise InvalidArgument(f"{field}.input_shape", f"got {list(schema.input_shape)} = {values} values per "
                                  f"sample; expected at most {self.max_sample_values} (the server's max_sample_values)")
        if schema.num_classes > self.max_classes:
            raise InvalidArgument(f"{field}.class_names", f"got {schema.num_classes} classes; expected at most "
                                  f"{self.max_classes} (the server's max_classes)")
        try:
            count = parameter_count(self.model, schema.input_shape, schema.num_classes)
        except (ValueError, RuntimeError) as e:
            raise InvalidArgument(f"{field}.input_shape", f"the server's {self.model} model cannot take "
                                  f"{schema.describe()}: {e}") from None
        if 4 * count > self.max_model_bytes:
            raise ResourceExhausted(f"{field}: the server's {self.model} model for {schema.describe()} would hold "
                                    f"{count:,} parameters, {4 * count / MiB:.0f} MiB, over the server's "
                                    f"max_model_bytes ({self.max_model_bytes / MiB:.0f} MiB); declare fewer input "
                                    "values or classes")
        self.min_batch(schema, field)

    def min_batch(self, schema: Schema, field: str = "schema") -> int:
        """The fewest samples a Train batch of this schema may hold (INVALID_ARGUMENT when none can train)."""
        try:
            return min_train_batch(self.model, schema.input_shape, schema.num_classes)
        except (ValueError, RuntimeError) as e:
            raise InvalidArgument(f"{field}.input_shape", f"the server's {self.model} model cannot train on "
                                  f"samples of {schema.describe()}: {e}") from None
