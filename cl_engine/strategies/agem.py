"""Averaged GEM (Chaudhry et al. 2019): one constraint, against the gradient on a random sample
of all past buckets' memories; a violating gradient loses its component along that reference."""
from __future__ import annotations

import torch
from torch.nn import functional as F

from ..projection import agem_project
from .base import StepOutput, Strategy, flat_grad, set_flat_grad


class AGEM(Strategy):
    name = "agem"

    def observe(self, x: torch.Tensor, y: torch.Tensor, bucket: int) -> StepOutput:
        ctx = self.ctx
        past = torch.tensor([b for b in ctx.buffer.buckets_held() if b != bucket], dtype=torch.int64)
        g_ref = None
        if len(past):
            mx, my = ctx.buffer.sample(ctx.config.agem_sample_size, ctx.generator, past)
            ctx.model.train()
            ctx.optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(ctx.model(mx), my).backward()
            g_ref = flat_grad(ctx.model)
        ctx.optimizer.zero_grad(set_to_none=True)
        logits, losses = self._forward_backward(x, y)
        if g_ref is not None:
            result = agem_project(flat_grad(ctx.model), g_ref)
            if result.projected:
                set_flat_grad(ctx.model, result.gradient)
                ctx.counters["projections"] = ctx.counters.get("projections", 0) + 1
        ctx.optimizer.step()
        return StepOutput(logits, float(losses.mean()))
