"""Gradient Episodic Memory (Lopez-Paz & Ranzato 2017): the step on the incoming batch may not
increase the loss on any past bucket's memories; a violating gradient is projected (projection.py).

The memories' gradients come as per-parameter blocks (gradients.py) and the projection works on
them and on the batch's gradient in place: no flattened copies of G or g per step."""
from __future__ import annotations

import torch

from ..guard import NonFinite
from ..projection import gem_project_
from .base import StepOutput, Strategy
from .gradients import MemoryGradients


class GEM(Strategy):
    name = "gem"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.memory_gradients = MemoryGradients(ctx.model)
        # One pass for the memories and the incoming batch together where the model allows it.
        self.merge_batch = self.memory_gradients.path == "linear"

    def observe(self, x: torch.Tensor, y: torch.Tensor, bucket: int) -> StepOutput:
        ctx = self.ctx
        past = [b for b in ctx.buffer.buckets_held() if b != bucket]
        if past and self.merge_batch:
            G, g, logits, losses = self.memory_gradients.with_batch(ctx.buffer, past, x, y)
        else:
            G = self.memory_gradients(ctx.buffer, past) if past else None
            logits, losses, g = self._forward_backward(x, y)
        projected = fallback = False
        if G is not None:
            full = self._dense(g)
            try:
                projected, fallback = gem_project_(full, G, ctx.config.memory_strength, ctx.config.qp_eps)
            except NonFinite:  # a memory's gradient or the batch's: nothing is applied
                return StepOutput(logits, float(losses.mean()), self._refuse(losses))
            if projected:
                g = full
        skipped = self._update(g, losses)
        if skipped is None:  # a refused step counts nothing but its refusal
            self._count("projections", projected)
            self._count("qp_fallbacks", fallback)
        return StepOutput(logits, float(losses.mean()), skipped)
