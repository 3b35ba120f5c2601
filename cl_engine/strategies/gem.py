"""Gradient Episodic Memory (Lopez-Paz & Ranzato 2017): the step on the incoming batch may not
increase the loss on any past bucket's memories; a violating gradient is projected (projection.py).

The memories' gradients come as per-parameter blocks (gradients.py) and the projection works on
them and on the parameters' own `.grad` in place: no flattened copies of G or g per step."""
from __future__ import annotations

import torch

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
        params = self.memory_gradients.params
        if past and self.merge_batch:
            ctx.optimizer.zero_grad(set_to_none=True)
            G, g, logits, losses = self.memory_gradients.with_batch(ctx.buffer, past, x, y)
            for p, gi in zip(params, g):
                p.grad = gi
        else:
            G = self.memory_gradients(ctx.buffer, past) if past else None
            ctx.optimizer.zero_grad(set_to_none=True)
            logits, losses = self._forward_backward(x, y)
        if G is not None:
            g = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            projected, fallback = gem_project_(g, G, ctx.config.memory_strength, ctx.config.qp_eps)
            if projected:
                for p, gi in zip(params, g):
                    p.grad = gi
                ctx.counters["projections"] = ctx.counters.get("projections", 0) + 1
            if fallback:
                ctx.counters["qp_fallbacks"] = ctx.counters.get("qp_fallbacks", 0) + 1
        ctx.optimizer.step()
        return StepOutput(logits, float(losses.mean()))
