"""The contract every strategy keeps (after the GEM reference code's `observe`): one call per
incoming batch does one update and returns the batch's logits from before that update.

Gradients are taken with `torch.autograd.grad`, or for a chain of linear layers by `LinearPass`,
and applied by `sgd_step`, never through the parameters' `.grad`: no accumulation to zero before
each step, no optimizer.step() overhead."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from ..buffer import ReplayBuffer
from ..guard import NonFinite, StepGuard
from ..precision import LossScale, model_autocast, precision_of
from .linear_pass import LinearPass, linear_only


@dataclass
class StepOutput:
    logits: torch.Tensor  # the incoming batch, scored by the model before this update
    loss: float  # cross-entropy of the incoming batch before this update
    skipped: str | None = None  # why the update was not applied (guard.REASONS); None: applied


@dataclass
class Context:
    """What a strategy works with; the learner owns all of it."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    buffer: ReplayBuffer
    generator: torch.Generator
    config: "object"
    counters: dict[str, int] = field(default_factory=dict)


def ensure_training(model: nn.Module) -> None:
    """Training mode, switched only when needed: train() walks every module, a tenth of a small
    model's step."""
    if not model.training:
        model.train()


class Strategy:
    name = "base"
    uses_memory = True

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.params = [p for p in ctx.model.parameters() if p.requires_grad]
        # the hand-written pass is float32 arithmetic: other precisions go through autocast and autograd
        self.linear = LinearPass(ctx.model) if linear_only(ctx.model) and precision_of(ctx.model) == "fp32" else None
        self.loss_scale = LossScale(precision_of(ctx.model) == "fp16")
        self.guard = StepGuard(ctx.optimizer, self.params, ctx.counters, ctx.config.clip_grad_norm,
                               ctx.config.gradient_outlier_ratio, ctx.config.max_update_ratio, ctx.model)

    def observe(self, x: torch.Tensor, y: torch.Tensor, bucket: int) -> StepOutput:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """What the strategy itself carries from step to step (beyond the learner's model, memory and
        generator), for the learner's checkpoint; none by default."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor | None]]:
        """Logits and per-sample losses of (x, y) in training mode, and the mean loss's gradient
        per parameter of `self.params` (None where the loss does not reach it)."""
        model = self.ctx.model
        ensure_training(model)
        if self.linear is not None:
            n = y.shape[0]
            _, grads, logits, losses = self.linear(x, y, torch.full((n,), 1.0 / n, dtype=x.dtype, device=x.device))
            return logits, losses, grads
        self.guard.before_forward()
        with model_autocast(model):
            logits = model(x).float()
        losses = F.cross_entropy(logits, y, reduction="none")
        scale = self.loss_scale.scale
        grads = list(torch.autograd.grad(losses.mean() * scale if scale != 1 else losses.mean(), self.params,
                                         allow_unused=True))
        if scale != 1:  # fp16: back to the true gradient, in float32 (an overflow stays non-finite for the guard)
            torch._foreach_div_([g for g in grads if g is not None], scale)
        return logits.detach(), losses.detach(), grads

    def _dense(self, grads: list[torch.Tensor | None]) -> list[torch.Tensor]:
        """`grads` with zeros for the parameters a loss did not reach, as a projection needs them."""
        return [g if g is not None else torch.zeros_like(p) for p, g in zip(self.params, grads)]

    def _update(self, grads: list[torch.Tensor | None], losses: torch.Tensor) -> str | None:
        """One guarded SGD step (guard.py); None when applied, else the reason it was not."""
        skipped = self.guard.step(grads, losses)
        self.loss_scale.update(skipped not in ("non_finite_gradient", "non_finite_loss"))
        return skipped

    def _count(self, counter: str, happened: bool) -> None:
        if happened:
            self.ctx.counters[counter] = self.ctx.counters.get(counter, 0) + 1

    def _refuse(self, losses: torch.Tensor) -> str:
        """Skip a step whose gradients proved non-finite before they reached the update (NonFinite)."""
        return self.guard.skip("non_finite_gradient" if bool(torch.isfinite(losses).all()) else "non_finite_loss")
