"""The contract every strategy keeps (after the GEM reference code's `observe`): one call per
incoming batch does one update and returns the batch's logits from before that update."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from ..buffer import ReplayBuffer


@dataclass
class StepOutput:
    logits: torch.Tensor  # the incoming batch, scored by the model before this update
    loss: float  # cross-entropy of the incoming batch before this update


@dataclass
class Context:
    """What a strategy works with; the learner owns all of it."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    buffer: ReplayBuffer
    generator: torch.Generator
    config: "object"
    counters: dict[str, int] = field(default_factory=dict)


def flat_grad(model: nn.Module) -> torch.Tensor:
    """All parameter gradients as one vector, in `model.parameters()` order (zeros where unused)."""
    return torch.cat([
        (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
        for p in model.parameters() if p.requires_grad
    ])


def set_flat_grad(model: nn.Module, g: torch.Tensor) -> None:
    offset = 0
    for p in model.parameters():
        if not p.requires_grad:
            continue
        n = p.numel()
        p.grad = g[offset: offset + n].view_as(p).clone()
        offset += n


def ensure_training(model: nn.Module) -> None:
    """Training mode, switched only when needed: train() walks every module, a tenth of a small
    model's step."""
    if not model.training:
        model.train()


class Strategy:
    name = "base"
    uses_memory = True

    def __init__(self, ctx: Context):
        self.ctx = ctx

    def observe(self, x: torch.Tensor, y: torch.Tensor, bucket: int) -> StepOutput:
        raise NotImplementedError

    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and per-sample losses of (x, y) in training mode, gradients accumulated."""
        model = self.ctx.model
        ensure_training(model)
        logits = model(x)
        losses = F.cross_entropy(logits, y, reduction="none")
        losses.mean().backward()
        return logits.detach(), losses.detach()
