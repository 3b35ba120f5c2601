"""Experience replay: each step trains on the incoming batch together with a batch of the replay
memory (one loss over the union, as in Chaudhry et al. 2019, "On Tiny Episodic Memories"). The
memory's batches walk it in shuffled passes (ReplayBuffer.draw): every memory is replayed once
before any is replayed twice, as a shuffled loader over the memory (Avalanche's) replays it.

The memory batch is `replay_batch_size`, by default the bucket's batch size: the largest incoming
batch of the open bucket so far. So a bucket's last, partial batch still replays a full batch of
memories, as a fixed memory batch does (Chaudhry et al.'s; Avalanche's batch_size_mem). Replaying
only as many as the partial batch held weighted the bucket's last step towards the new bucket and
cost 0.3-0.6 points of ACC against Avalanche's Replay (BENCHMARKS.md, "Why replay at defaults
trailed")."""
from __future__ import annotations

import torch

from .base import Context, StepOutput, Strategy


class Replay(Strategy):
    name = "replay"

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.bucket, self.largest = -1, 0  # the open bucket's largest applied batch so far

    def observe(self, x: torch.Tensor, y: torch.Tensor, bucket: int) -> StepOutput:
        ctx, n = self.ctx, len(y)
        if bucket != self.bucket:
            self.bucket, self.largest = bucket, 0
        inputs, targets = x, y
        if len(ctx.buffer):
            mx, my = ctx.buffer.draw(ctx.config.replay_batch_size or max(n, self.largest), ctx.generator)
            inputs, targets = torch.cat([x, mx]), torch.cat([y, my])
        logits, losses, grads = self._forward_backward(inputs, targets)
        skipped = self._update(grads, losses)
        if skipped is None:
            self.largest = max(self.largest, n)
        return StepOutput(logits[:n], float(losses[:n].mean()), skipped)

    def state_dict(self) -> dict:
        return {"bucket": self.bucket, "largest_batch": self.largest}

    def load_state_dict(self, state: dict) -> None:
        self.bucket, self.largest = state["bucket"], state["largest_batch"]
