"""Averaged GEM (Chaudhry et al. 2019): one constraint, against the gradient on a random sample
of all past buckets' memories; a violating gradient loses its component along that reference.
The projection works on the parameters' `.grad` in place, with no flattened copies."""
from __future__ import annotations

import torch
from torch.nn import functional as F

from ..projection import agem_project_
from .base import StepOutput, Strategy, ensure_training


class AGEM(Strategy):
    name = "agem"

    def observe(self, x: torch.Tensor, y: torch.Tensor, bucket: int) -> StepOutput:
        ctx = self.ctx
        params = [p for p in ctx.model.parameters() if p.requires_grad]
        past = [b for b in ctx.buffer.buckets_held() if b != bucket]
        g_ref = None
        if past:
            mx, my = ctx.buffer.sample(ctx.config.agem_sample_size, ctx.generator, torch.tensor(past))
            ensure_training(ctx.model)
            ctx.optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(ctx.model(mx), my).backward()
            # The reference keeps these gradient tensors; zero_grad(set_to_none) below detaches them.
            g_ref = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        ctx.optimizer.zero_grad(set_to_none=True)
        logits, losses = self._forward_backward(x, y)
        if g_ref is not None:
            g = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            if agem_project_(g, g_ref):
                for p, gi in zip(params, g):
                    p.grad = gi
                ctx.counters["projections"] = ctx.counters.get("projections", 0) + 1
        ctx.optimizer.step()
        return StepOutput(logits, float(losses.mean()))
