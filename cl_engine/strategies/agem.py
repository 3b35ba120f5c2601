"""Averaged GEM (Chaudhry et al. 2019): one constraint, against the gradient on a random sample
of all past buckets' memories; a violating gradient loses its component along that reference.
The projection works on the gradient blocks in place, with no flattened copies."""
from __future__ import annotations

import torch

from ..guard import NonFinite
from ..projection import agem_project_
from .base import StepOutput, Strategy


class AGEM(Strategy):
    name = "agem"

    def observe(self, x: torch.Tensor, y: torch.Tensor, bucket: int) -> StepOutput:
        ctx = self.ctx
        past = [b for b in ctx.buffer.buckets_held() if b != bucket]
        g_ref = None
        if past:
            mx, my = ctx.buffer.sample(ctx.config.agem_sample_size, ctx.generator, torch.tensor(past))
            g_ref = self._dense(self._forward_backward(mx, my)[2])
        logits, losses, g = self._forward_backward(x, y)
        projected = False
        if g_ref is not None:
            full = self._dense(g)
            try:
                projected = agem_project_(full, g_ref)
            except NonFinite:
                return StepOutput(logits, float(losses.mean()), self._refuse(losses))
            if projected:
                g = full
        skipped = self._update(g, losses)
        if skipped is None:  # a refused step counts nothing but its refusal
            self._count("projections", projected)
        return StepOutput(logits, float(losses.mean()), skipped)
