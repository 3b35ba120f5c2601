"""Fine-tuning: one SGD step on the incoming batch, no memory. The lower bound."""
from __future__ import annotations

import torch

from .base import StepOutput, Strategy


class Naive(Strategy):
    name = "naive"
    uses_memory = False

    def observe(self, x: torch.Tensor, y: torch.Tensor, bucket: int) -> StepOutput:
        logits, losses, grads = self._forward_backward(x, y)
        skipped = self._update(grads, losses)
        return StepOutput(logits, float(losses.mean()), skipped)
