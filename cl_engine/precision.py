"""Arithmetic precision and memory layout of a learner's model (LearnerConfig.precision, channels_last).

- precision "fp32": plain float32. "bf16": every forward pass (training, evaluation, selection
  scoring, GEM/A-GEM's memory gradients, Predict) runs under `torch.autocast` in bfloat16 on the
  learner's device; weights, gradients, the optimizer and the GEM/A-GEM projections stay float32
  (autocast casts per op; backward follows the forward's dtypes and leaves float32 gradients).
  "fp16": the same in float16, CUDA only, with a dynamic loss scale (`LossScale`, GradScaler's
  policy) so small gradients do not flush to zero; a scaled step whose gradient overflows is not
  applied and halves the scale (counted as `non_finite_gradient` by the step guard). The scale covers
  the batch's gradient and A-GEM's reference gradient; GEM's per-bucket memory gradients are taken
  unscaled (a projection direction; underflow there only shortens tiny components). fp16 has not run
  on a GPU yet: its tests are CUDA-only (tests/test_precision.py) and skipped here.
- channels_last (models with 4-d image inputs): weights and inputs in NHWC, the layout oneDNN and
  cuDNN convolve fastest. Same arithmetic up to float rounding (predictions equal within tolerance).
Logits leave the model as float32 whatever the precision.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device):
    """The context every forward pass of the model runs in."""
    dtype = DTYPES[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def prepare(model: nn.Module, precision: str, channels_last: bool) -> nn.Module:
    """Mark `model` with its precision (copies, snapshots and pickles carry the mark: `model_autocast`
    reads it wherever the model is called) and put it in channels_last where asked."""
    model.clstream_precision = precision
    if channels_last:
        use_channels_last(model)
    return model


def precision_of(model: nn.Module) -> str:
    return getattr(model, "clstream_precision", "fp32")


def model_autocast(model: nn.Module, device: torch.device | None = None):
    """The autocast context of `model`'s marked precision, on `device` (default: its parameters')."""
    precision = precision_of(model)
    if precision == "fp32":
        return contextlib.nullcontext()
    if device is None:
        device = next(model.parameters()).device
    return autocast(precision, device)


def _to_channels_last(module: nn.Module, args: tuple):
    x = args[0] if args else None
    if isinstance(x, torch.Tensor) and x.ndim == 4:
        return (x.contiguous(memory_format=torch.channels_last), *args[1:])
    return None


def use_channels_last(model: nn.Module) -> bool:
    """Put a conv model's weights in channels_last and convert its 4-d inputs on the way in (a forward
    pre-hook). False (nothing changed) for a model without 2-d convolutions."""
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return False
    model.to(memory_format=torch.channels_last)
    model.register_forward_pre_hook(_to_channels_last)
    return True


class LossScale:
    """fp16's dynamic loss scale, torch.amp.GradScaler's policy: start at 2¹⁶, halve on a step whose
    gradient is not finite, double after `growth_interval` finite steps in a row. Disabled (scale 1,
    nothing to do) for any precision but fp16."""

    def __init__(self, enabled: bool, init: float = 2.0 ** 16, growth_interval: int = 2000):
        self.enabled = enabled
        self.scale = init if enabled else 1.0
        self.growth_interval = growth_interval
        self.good_steps = 0

    def update(self, finite: bool) -> None:
        if not self.enabled:
            return
        if not finite:
            self.scale, self.good_steps = self.scale / 2, 0
            return
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale, self.good_steps = self.scale * 2, 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.good_steps = float(state["scale"]), int(state["good_steps"])
