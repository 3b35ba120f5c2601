"""The step guard: a step whose loss or gradient is not finite is not applied, and a step that would
leave non-finite weights is undone, so one bad batch never turns the model into NaN.

The model's float buffers (batch-norm statistics) move in the forward pass, before the update: a
step after which one is not finite is refused too (`non_finite_weights`; the learner puts the
statistics back). So every applied step leaves every weight and statistic finite, and the server
checks a model's weights once (when built, restored or rolled back) instead of before every
publication.

Cost: one fused check per step. The norms of every gradient block, weight, SGD momentum buffer and
statistic are taken by one `torch._foreach_norm` and read back together with the batch's summed loss
in a single host sync (about 75 µs of a digits-MLP step on this CPU: BENCHMARKS.md, guard_cost).
Those norms bound what the update can do: when
‖p‖ + lr·(the update's norm bound) stays far below float32's range, no weight can overflow and
the step is applied directly; only a step that could overflow (an absurd learning rate or
gradient) is applied on a backup copy of the weights and momentum, checked, and undone if any
weight came out non-finite. Nothing here changes the arithmetic of a finite step.

The update-size guard (`gradient_outlier_ratio`, default 10): a step whose gradient norm is more
than that many times the running typical norm is not applied (`gradient_outlier`). A finite but
absurd batch (constant 1e4 samples, say) has a gradient hundreds of times the usual one and would
undo in one step what the stream taught; the stream's own batches stay far below the bar (measured
in BENCHMARKS.md: not one step skipped on the embedded streams, so their results are unchanged).
The typical norm is an exponential average over the steps taken (factor `OUTLIER_DECAY`), into which
a refused step enters capped at the bar: one outlier barely moves it, while a lasting change of scale
(a new kind of data) lifts it by ratio-fold within tens of steps and is learned from again. The
check starts after `OUTLIER_WARMUP` steps, the first ones setting the typical norm.

Its second half (`max_update_ratio`, default 10): a step whose update could be more than that many
times the weights' own norm (at least 1) is not applied (`update_too_large`). That is a learning
rate that makes the loss explode: the first such step would throw the weights far from anything
learned, where the next logits overflow. The digits MLP's steps move its weights by a tenth of
their norm at most, but a fresh linear probe on large features (512-d, values up to about 10) at
lr 0.1 moves its small weights by twice their norm: a bar of 1 would refuse every step of that
legitimate run for ever, hence 10. A learning rate too large by less than that is not caught here
(the outlier half catches the steps after it, guarded promotion keeps it from serving). The update
is bounded as for the overflow check below, from norms the guard reads anyway, so this costs
nothing.

Optional gradient-norm clipping (`clip_grad_norm` > 0) scales the gradient to that global L2
norm at most; off by default, as it changes results on the normal streams (see docs/server.md).
"""
from __future__ import annotations

import logging
import math

import torch

from .sgd import sgd_step

log = logging.getLogger(__name__)

REASONS = ("non_finite_loss", "non_finite_gradient", "non_finite_weights", "gradient_outlier", "update_too_large")
SAFE_BOUND = 1e30  # far below float32's 3.4e38: an update bounded by it cannot overflow a weight
OUTLIER_WARMUP = 20  # steps that set the typical gradient norm before the outlier check starts
OUTLIER_DECAY = 0.99  # the typical norm's exponential average: about the last hundred steps


class NonFinite(ArithmeticError):
    """A gradient (or a product of gradients) is not finite; nothing was changed."""


def _norm(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The L2 norm of all `tensors` together, as a 0-d float tensor on `device` (no sync)."""
    if not tensors:
        return torch.zeros((), device=device)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors))).float()


def _combined(norms: list[float]) -> float:
    """The L2 norm of tensors whose own norms are `norms` (float64: no overflow from float32 norms)."""
    return math.sqrt(math.fsum(n * n for n in norms))


def _slices(*lengths: int) -> list[tuple[int, int]]:
    out, start = [], 0
    for n in lengths:
        out.append((start, start + n))
        start += n
    return out


def all_finite(tensors) -> bool:
    """Whether every floating-point value of `tensors` is finite: one fused norm, one sync."""
    floats = [t.detach() for t in tensors if t.is_floating_point()]
    return not floats or math.isfinite(float(_norm(floats, floats[0].device)))


class StepGuard:
    """Applies SGD updates for one optimizer and parameter list, guarded (see the module docstring).
    Counts skipped steps by reason into `counters` (keys `skipped_<reason>`)."""

    def __init__(self, optimizer: torch.optim.SGD, params: list[torch.Tensor], counters: dict[str, int],
                 clip_grad_norm: float = 0.0, outlier_ratio: float = 0.0, update_ratio: float = 0.0,
                 statistics: list[torch.Tensor] | None = None):
        self.optimizer = optimizer
        self.params = params
        self.statistics = statistics or []  # the model's float buffers (batch-norm statistics): the forward moved them
        self.counters = counters
        self.clip = clip_grad_norm
        self.outlier_ratio = outlier_ratio
        self.update_ratio = update_ratio
        self.typical_norm = 0.0  # running average of the gradient norms (see the module docstring)
        self.norms_seen = 0
        self.streak = 0  # consecutive skipped steps, logged once per streak
        for reason in REASONS:
            counters.setdefault(f"skipped_{reason}", 0)

    def skip(self, reason: str) -> str:
        self.counters[f"skipped_{reason}"] += 1
        if self.streak == 0:
            log.warning("step not applied: %s (the batch is consumed, the model keeps its weights); further "
                        "skips in this streak are counted, not logged", reason.replace("_", " "))
        self.streak += 1
        return reason

    def applied(self) -> None:
        if self.streak:
            log.warning("training steps apply again after %d skipped", self.streak)
            self.streak = 0

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor | None], losses: torch.Tensor) -> str | None:
        """Apply `grads` (None: the parameter is left alone), the gradient of the mean of the
        per-sample `losses`; returns None when applied, else the reason it was not."""
        present = [g for g in grads if g is not None]
        group = self.optimizer.param_groups[0]
        lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
        bufs = [b for b in (self.optimizer.state[p].get("momentum_buffer") for p in self.params) if b is not None]
        norms = torch._foreach_norm(present + self.params + bufs + self.statistics)  # one fused call for all groups
        checks = torch.stack([*norms, losses.detach().sum().to(norms[0].dtype)]).tolist()  # the one host sync
        loss_v = checks[-1]
        g_norm, p_norm, b_norm, s_norm = (_combined(checks[a:b]) for a, b in _slices(
            len(present), len(self.params), len(bufs), len(self.statistics)))
        if not math.isfinite(loss_v):
            return self.skip("non_finite_loss")
        if not math.isfinite(g_norm):
            return self.skip("non_finite_gradient")
        if not math.isfinite(s_norm):  # the caller puts back the statistics the forward pass moved
            return self.skip("non_finite_weights")
        if self._outlier(g_norm):
            return self.skip("gradient_outlier")
        if self.clip and g_norm > self.clip:
            torch._foreach_mul_(present, self.clip / (g_norm + 1e-6))
            g_norm = self.clip
        grad_bound = g_norm + wd * p_norm
        update_bound = (1 + momentum) * (grad_bound + momentum * b_norm)
        if self._too_large(lr * update_bound, p_norm):
            return self.skip("update_too_large")
        if math.isfinite(p_norm) and p_norm + lr * update_bound < SAFE_BOUND:
            sgd_step(self.optimizer, self.params, grads)
            self.applied()
            return None
        return self._step_with_backup(grads)

    def _outlier(self, g_norm: float) -> bool:
        """Whether `g_norm` is past the bar; updates the typical norm (a refused norm enters capped)."""
        if not self.outlier_ratio:
            return False
        bar = self.outlier_ratio * self.typical_norm
        outlier = self.norms_seen >= OUTLIER_WARMUP and g_norm > bar
        seen = min(g_norm, bar) if outlier else g_norm
        self.norms_seen += 1
        decay = min(OUTLIER_DECAY, 1 - 1 / self.norms_seen)  # a plain mean over the warm-up steps
        self.typical_norm = decay * self.typical_norm + (1 - decay) * seen
        return outlier

    def _too_large(self, update: float, p_norm: float) -> bool:
        """Whether an update of norm at most `update` could move weights of norm `p_norm` too far."""
        return bool(self.update_ratio) and update > self.update_ratio * max(p_norm, 1.0)

    def state_dict(self) -> dict:
        return {"typical_norm": self.typical_norm, "norms_seen": self.norms_seen}

    def load_state_dict(self, state: dict) -> None:
        self.typical_norm, self.norms_seen = float(state["typical_norm"]), int(state["norms_seen"])

    def _step_with_backup(self, grads: list[torch.Tensor | None]) -> str | None:
        """A step that might overflow: applied on a backup, undone if any weight is then not finite."""
        state = self.optimizer.state
        saved = [(p, p.detach().clone(), None if state[p].get("momentum_buffer") is None
                  else state[p]["momentum_buffer"].clone()) for p in self.params]
        sgd_step(self.optimizer, self.params, grads)
        if math.isfinite(float(_norm(self.params, self.params[0].device))):
            self.applied()
            return None
        with torch.no_grad():
            for p, w, b in saved:
                p.copy_(w)
                if b is None:
                    state[p].pop("momentum_buffer", None)
                else:
                    state[p]["momentum_buffer"] = b
        return self.skip("non_finite_weights")
