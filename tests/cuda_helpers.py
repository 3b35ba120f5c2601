"""What the tests marked `cuda` share: the device they run on, and where a state's tensors live.

`CUDA_TESTS_DEVICE` (default `cuda`) names the device those tests put the learner on. Set to `cpu`, the
same tests run here as a dry run of the tests themselves (they then compare the CPU with itself), which is
how they were written and checked on a machine without a GPU; tests/conftest.py then does not skip them."""
from __future__ import annotations

import os

import pytest
import torch

DEVICE = os.environ.get("CUDA_TESTS_DEVICE", "cuda")
cuda = pytest.mark.cuda


def device_type(device: str = DEVICE) -> str:
    return torch.device(device).type


def tensors_in(value, path: str = "state"):
    """(path, tensor) for every tensor nested in dicts, lists and tuples of `value`."""
    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from tensors_in(v, f"{path}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from tensors_in(v, f"{path}[{i}]")
