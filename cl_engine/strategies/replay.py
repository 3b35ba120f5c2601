"""Experience replay: each step trains on the incoming batch together with a batch of the replay
memory (one loss over the union, as in Chaudhry et al. 2019, "On Tiny Episodic Memories"). The
memory's batches walk it in shuffled passes (ReplayBuffer.draw): every memory is replayed once
before any is replayed twice, as a shuffled loader over the memory (Avalanche's) replays it."""
from __future__ import annotations

import torch

from .base import StepOutput, Strategy


class Replay(Strategy):
    name = "replay"

    def observe(self, x: torch.Tensor, y: torch.Tensor, bucket: int) -> StepOutput:
        ctx, n = self.ctx, len(y)
        inputs, targets = x, y
        if len(ctx.buffer):
            mx, my = ctx.buffer.draw(ctx.config.replay_batch_size or n, ctx.generator)
            inputs, targets = torch.cat([x, mx]), torch.cat([y, my])
        logits, losses, grads = self._forward_backward(inputs, targets)
        skipped = self._update(grads, losses)
        return StepOutput(logits[:n], float(losses[:n].mean()), skipped)
