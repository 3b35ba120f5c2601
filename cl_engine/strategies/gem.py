"""Gradient Episodic Memory (Lopez-Paz & Ranzato 2017): the step on the incoming batch may not
increase the loss on any past bucket's memories; a violating gradient is projected (projection.py)."""
from __future__ import annotations

import torch

from ..projection import gem_project
from .base import StepOutput, Strategy, flat_grad, set_flat_grad
from .gradients import per_bucket_gradients


class GEM(Strategy):
    name = "gem"

    def observe(self, x: torch.Tensor, y: torch.Tensor, bucket: int) -> StepOutput:
        ctx = self.ctx
        past = [b for b in ctx.buffer.buckets_held() if b != bucket]
        G = per_bucket_gradients(ctx.model, ctx.buffer, past) if past else None
        ctx.optimizer.zero_grad(set_to_none=True)
        logits, losses = self._forward_backward(x, y)
        if G is not None:
            result = gem_project(flat_grad(ctx.model), G, ctx.config.memory_strength, ctx.config.qp_eps)
            if result.projected:
                set_flat_grad(ctx.model, result.gradient)
                ctx.counters["projections"] = ctx.counters.get("projections", 0) + 1
            if result.fallback:
                ctx.counters["qp_fallbacks"] = ctx.counters.get("qp_fallbacks", 0) + 1
        ctx.optimizer.step()
        return StepOutput(logits, float(losses.mean()))
