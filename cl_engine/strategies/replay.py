"""Experience replay: each step trains on the incoming batch together with a batch drawn
uniformly from the replay memory (one loss over the union, as in Chaudhry et al. 2019, "On
Tiny Episodic Memories")."""
from __future__ import annotations

import torch

from .base import StepOutput, Strategy


class Replay(Strategy):
    name = "replay"

    def observe(self, x: torch.Tensor, y: torch.Tensor, bucket: int) -> StepOutput:
        ctx, n = self.ctx, len(y)
        inputs, targets = x, y
        if len(ctx.buffer):
            mx, my = ctx.buffer.sample(ctx.config.replay_batch_size or n, ctx.generator)
            inputs, targets = torch.cat([x, mx]), torch.cat([y, my])
        logits, losses, grads = self._forward_backward(inputs, targets)
        skipped = self._update(grads, losses)
        return StepOutput(logits[:n], float(losses[:n].mean()), skipped)
