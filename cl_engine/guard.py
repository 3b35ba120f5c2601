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
than that many times the typical norm is not applied (`gradient_outlier`). A finite but absurd batch
(constant 1e4 samples, say) has a gradient tens of thousands of times the usual one and would undo in
one step what the stream taught; the stream's own batches stay below a third of the bar (measured in
BENCHMARKS.md, update_guard: not one step refused on the embedded streams at 1 and 5 passes, nor on a
conv model's images, so their results are unchanged).

The typical norm is a decaying peak: the largest recent norm, falling by `PEAK_DECAY` a step. Not a
mean: as a model fits its bucket its gradients shrink a hundredfold between rare large ones (a
misclassified batch, a new bucket's first steps), and a mean that had sunk with them put those
ordinary steps 19× (the digits MLP at 5 passes) to 72× (a conv model) over it, where the peak keeps
them under 4×. A refused norm lifts the peak only `OUTLIER_RISE` of the way to the bar (9%): one
outlier barely moves it, while a lasting change of scale (a new kind of data) lifts it ratio-fold
within about 30 steps and is learned from again. The check starts after `OUTLIER_WARMUP` steps, the
first ones setting the typical norm.

A batch-norm model divides the input's scale out of its gradient: constant 1e4 gives a reduced ResNet18
a gradient a few times its usual one, under the bar, yet its forward pass moves the running statistics
by orders of magnitude, and every later prediction (which reads them) is then chance. So a step is also
refused when its forward passes grew a channel's running variance more than ratio-fold, or moved its
running mean by more than ratio of the channel's standard deviations (`statistics_outlier`; the caller
puts the statistics back). A normal batch moves them a tenth of the way to its own (the batch-norm
momentum): past the bar only with a batch whose variance is about 90 times the running one, inputs
scaled about tenfold (measured: BENCHMARKS.md, update_guard_conv). The bar is lifted as the gradients'
is: each refused step multiplies it by 1 + OUTLIER_RISE·(ratio − 1), each applied one lets it fall back
by PEAK_DECAY to ratio, so a lasting change of scale is learned from again; it is checked after the
OUTLIER_WARMUP steps in which the statistics leave their initial values for the data's. A model
without batch norm skips this check.

The same check refuses the opposite: a batch with almost no variance, such as blank frames (every pixel
0, or 0 plus sensor noise of 0.01). Batch norm divides by the batch's own standard deviation, so such a
batch's few differences (noise, the zero padding's edges) are blown up by up to 1/√eps, about 300 times:
one step of them took a trained reduced ResNet18 from 100% held-out accuracy to 24–73% while its gradient
stayed within the ordinary spread. A step is refused when, in some batch-norm layer, the batch's own
forward pass saw less than 1/ratio² of the layer's usual variance (summed over channels: the channels'
usual scale divided by more than ratio). The batch's variance is read back from how its forward pass moved
the running variance (new = (1 − momentum)·old + momentum·batch), compared with the variance just before
that pass, the step's last (memory passes come first). Measured as that factor (BENCHMARKS.md,
update_guard_conv): the stream's own steps at most 2.4, every strategy; one image ten times on 32×32 images
1.4 (its pixels still vary); blank frames 29 (sensor noise) to 142 (constant 0). Replay normalises the batch
together with its memories, so there blank frames collapse nothing and are not refused: what they do
then is what any batch with wrong labels does, which no check here tells from a new bucket's first batch.

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
from torch import nn

from .sgd import sgd_step

log = logging.getLogger(__name__)

REASONS = ("non_finite_loss", "non_finite_gradient", "non_finite_weights", "gradient_outlier", "statistics_outlier",
           "update_too_large")
SAFE_BOUND = 1e30  # far below float32's 3.4e38: an update bounded by it cannot overflow a weight
OUTLIER_WARMUP = 20  # steps that set the typical norm before the outlier check starts
PEAK_DECAY = 0.999  # the typical norm is a decaying peak: without a larger norm it falls e-fold in 1000 steps
OUTLIER_RISE = 0.01  # a refused norm lifts the typical norm this share of the way to the bar (9% at a bar of 10)


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


class TypicalNorm:
    """The typical size of a series of norms, with an outlier bar at `ratio` times it (see the module
    docstring): a decaying peak (the largest recent norm, falling by PEAK_DECAY a step), set by the first
    OUTLIER_WARMUP norms, which are never outliers; a norm past the bar lifts it only OUTLIER_RISE of the
    way to the bar."""

    def __init__(self, ratio: float):
        self.ratio = ratio
        self.value = 0.0
        self.seen = 0

    def outlier(self, norm: float) -> bool:
        """Whether `norm` is past the bar; takes it into the typical norm either way."""
        if not self.ratio:
            return False
        bar = self.ratio * self.value
        outlier = self.seen >= OUTLIER_WARMUP and norm > bar
        self.seen += 1
        if outlier:
            self.value += OUTLIER_RISE * (bar - self.value)
        else:
            self.value = max(norm, PEAK_DECAY * self.value)
        return outlier


class ShiftBar:
    """The bar for how far one step may move the batch-norm statistics (see the module docstring): `ratio`
    times an allowance that each refused step lifts by OUTLIER_RISE of the way to ratio-fold (9%) and
    each applied one lets fall back towards 1 by PEAK_DECAY; checked after OUTLIER_WARMUP steps, in which
    the statistics leave their initial values (0 and 1) for the data's."""

    def __init__(self, ratio: float):
        self.ratio = ratio
        self.allowance = 1.0
        self.seen = 0

    def outlier(self, shift: float) -> bool:
        outlier = self.seen >= OUTLIER_WARMUP and shift > self.ratio * self.allowance
        self.seen += 1
        if outlier:
            self.allowance *= 1 + OUTLIER_RISE * (self.ratio - 1)
        else:
            self.allowance = max(1.0, PEAK_DECAY * self.allowance)
        return outlier


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The batch-norm layers that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None]


class NormalisationShift:
    """How far a step's forward passes moved a model's batch-norm normalisations (see the module docstring),
    over all layers' channels at once: a dozen flat tensor ops, no host sync."""

    def __init__(self, layers: list[nn.modules.batchnorm._BatchNorm]):
        self.means = [m.running_mean for m in layers]
        self.variances = [m.running_var for m in layers]
        device = self.variances[0].device

        def per_channel(values) -> torch.Tensor:
            return torch.cat([torch.full((m.num_features,), float(v)) for m, v in zip(layers, values)]).to(device)

        self.eps = per_channel(m.eps for m in layers)
        # the batch's own variance from its forward pass's move of the running one: new = keep·old + share·batch;
        # a layer that keeps a cumulative average (momentum None) has its running variance stand for the batch
        self.keep = per_channel(0.0 if m.momentum is None else 1 - m.momentum for m in layers)
        self.share = per_channel(1.0 if m.momentum is None else m.momentum for m in layers)
        self.layer_sums = torch.block_diag(*(torch.ones(m.num_features, 1) for m in layers)).to(device)  # channels → layers
        self.floor = torch.tensor([m.eps * m.num_features for m in layers], device=device)
        self.start_mean = self.start_var = self.forward_var = None

    def start(self) -> None:
        """Before a step's forward passes."""
        self.start_mean, self.start_var = torch.cat(self.means), torch.cat(self.variances)
        self.forward_var = self.start_var

    def before_forward(self) -> None:
        """Before each forward pass of a step: the variance check reads the last one's batch (the batch's own;
        memory passes come first)."""
        self.forward_var = torch.cat(self.variances)

    def shift(self) -> torch.Tensor | None:
        """The largest factor by which a channel's running variance grew, shift of its running mean in the
        channel's former standard deviations, or factor by which a layer's batch scaled its channels up (the
        square root of the layer's usual variance over the batch's own, summed over its channels); 0-d."""
        if self.start_var is None:
            return None
        mean, var = torch.cat(self.means), torch.cat(self.variances)
        old = self.start_var + self.eps
        grown = var / old
        moved = (mean - self.start_mean).abs_().div_(old.sqrt_())
        batch = ((var - self.keep * self.forward_var) / self.share).clamp_min_(0)
        sums = torch.stack([self.forward_var, batch]) @ self.layer_sums + self.floor
        scaled_up = (sums[0] / sums[1]).max().sqrt()
        return torch.stack([grown.max(), moved.max(), scaled_up]).max()


class StepGuard:
    """Applies SGD updates for one optimizer and parameter list, guarded (see the module docstring).
    Counts skipped steps by reason into `counters` (keys `skipped_<reason>`)."""

    def __init__(self, optimizer: torch.optim.SGD, params: list[torch.Tensor], counters: dict[str, int],
                 clip_grad_norm: float = 0.0, outlier_ratio: float = 0.0, update_ratio: float = 0.0,
                 model: nn.Module | None = None):
        self.optimizer = optimizer
        self.params = params
        self.buffers = [] if model is None else list(model.buffers())  # the forward pass moves them (batch norm)
        self.statistics = [b for b in self.buffers if b.is_floating_point()]
        layers = [] if model is None else batch_norms(model)
        self.normalisations = NormalisationShift(layers) if layers else None
        self.saved: list[torch.Tensor] = []  # the buffers before this step's forward pass (save_buffers)
        self.counters = counters
        self.clip = clip_grad_norm
        self.update_ratio = update_ratio
        self.gradients = TypicalNorm(outlier_ratio)
        self.shift_bar = ShiftBar(outlier_ratio if self.normalisations is not None else 0.0)
        self.streak = 0  # consecutive skipped steps, logged once per streak
        for reason in REASONS:
            counters.setdefault(f"skipped_{reason}", 0)

    def save_buffers(self) -> None:
        """Before a step's forward passes: what put_back_buffers restores and the statistics check compares."""
        self.saved = [b.clone() for b in self.buffers]
        if self.normalisations is not None:
            self.normalisations.start()

    def before_forward(self) -> None:
        """Before each forward pass of a step (see NormalisationShift.before_forward)."""
        if self.normalisations is not None:
            self.normalisations.before_forward()

    @torch.no_grad()
    def put_back_buffers(self) -> None:
        """After a refused step: the buffers as its forward passes found them."""
        for b, old in zip(self.buffers, self.saved):
            b.copy_(old)

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
        shift = self.normalisations.shift() if self.shift_bar.ratio else None
        extra = [losses.detach().sum()] + ([] if shift is None else [shift])
        checks = torch.stack([*norms, *(t.to(norms[0].dtype) for t in extra)]).tolist()  # the one host sync
        loss_v = checks[len(norms)]
        g_norm, p_norm, b_norm, s_norm = (_combined(checks[a:b]) for a, b in _slices(
            len(present), len(self.params), len(bufs), len(self.statistics)))
        if not math.isfinite(loss_v):
            return self.skip("non_finite_loss")
        if not math.isfinite(g_norm):
            return self.skip("non_finite_gradient")
        if not math.isfinite(s_norm):  # the caller puts back the statistics the forward pass moved
            return self.skip("non_finite_weights")
        if shift is not None and self.shift_bar.outlier(checks[-1]):  # the caller puts the statistics back
            return self.skip("statistics_outlier")
        if self.gradients.outlier(g_norm):
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

    def _too_large(self, update: float, p_norm: float) -> bool:
        """Whether an update of norm at most `update` could move weights of norm `p_norm` too far."""
        return bool(self.update_ratio) and update > self.update_ratio * max(p_norm, 1.0)

    def state_dict(self) -> dict:
        return {"typical_norm": self.gradients.value, "norms_seen": self.gradients.seen,
                "statistics_allowance": self.shift_bar.allowance, "statistics_seen": self.shift_bar.seen}

    def load_state_dict(self, state: dict) -> None:
        self.gradients.value, self.gradients.seen = float(state["typical_norm"]), int(state["norms_seen"])
        # checkpoints written before the statistics check start it afresh (its warm-up: OUTLIER_WARMUP steps)
        self.shift_bar.allowance = float(state.get("statistics_allowance", 1.0))
        self.shift_bar.seen = int(state.get("statistics_seen", 0))

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
