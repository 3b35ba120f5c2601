"""The forward and backward of a chain of nn.Linear layers and per-sample modules, written out.

The `mlp` and `linear` models are such chains. For them the engine runs the pass itself instead
of through nn.Module calls and autograd: leaf by leaf forward, keeping each module's input and
output; the loss's gradient in closed form; then per module, backwards down to the first trained
layer, the aten backward op that autograd itself would call, and each layer's weight gradient as
a matmul of its output gradients and inputs. The arithmetic is autograd's; what goes is the
graph's bookkeeping: for the MLP a batch of 10's gradient takes about 0.6 of autograd's time,
GEM's pass over its memories and batch 10–25% less (1 to 4 past buckets of 256). Module hooks
are not run, which is why a hooked model is not a chain.

One pass serves GEM too: rows 0..T·m-1 may be memories grouped by bucket, whose weight gradients
come out per bucket as batched matmuls into blocks (T, *parameter.shape), while the rows after
them, the incoming batch, get one gradient of their own.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

aten = torch.ops.aten

# Modules that hold no parameters and treat each sample on its own (no batch statistics, no
# randomness), as (forward, backward). forward(module, x) -> y, never in place (the backward reads
# x or y); backward(module, dy, x, y) -> dx.
PER_SAMPLE_PASSES = {
    nn.Flatten: (lambda m, x: x.flatten(m.start_dim, m.end_dim), lambda m, d, x, y: d.reshape(x.shape)),
    nn.Identity: (lambda m, x: x, lambda m, d, x, y: d),
    nn.ReLU: (lambda m, x: torch.relu(x), lambda m, d, x, y: aten.threshold_backward(d, y, 0)),
    nn.LeakyReLU: (lambda m, x: F.leaky_relu(x, m.negative_slope),
                   lambda m, d, x, y: aten.leaky_relu_backward(d, x, m.negative_slope, False)),
    nn.ELU: (lambda m, x: F.elu(x, m.alpha), lambda m, d, x, y: aten.elu_backward(d, m.alpha, 1, 1, False, x)),
    nn.GELU: (lambda m, x: F.gelu(x, approximate=m.approximate),
              lambda m, d, x, y: aten.gelu_backward(d, x, approximate=m.approximate)),
    nn.SiLU: (lambda m, x: F.silu(x), lambda m, d, x, y: aten.silu_backward(d, x)),
    nn.Tanh: (lambda m, x: torch.tanh(x), lambda m, d, x, y: aten.tanh_backward(d, y)),
    nn.Sigmoid: (lambda m, x: torch.sigmoid(x), lambda m, d, x, y: aten.sigmoid_backward(d, y)),
}
PER_SAMPLE = (nn.Sequential, *PER_SAMPLE_PASSES)


def linear_only(model: nn.Module) -> bool:
    """Every module is an nn.Linear or one of PER_SAMPLE (exact types), with no hooks: the model
    is the chain of its leaves (`leaves`)."""
    return all((type(m) is nn.Linear or type(m) in PER_SAMPLE) and not m._forward_hooks and not m._forward_pre_hooks
               for m in model.modules())


def leaves(model: nn.Module):
    """The modules a linear-only model applies, in order: its nn.Sequential containers flattened,
    a module used twice listed twice."""
    if type(model) is nn.Sequential:
        for child in model:
            yield from leaves(child)
    else:
        yield model


class LinearPass:
    """The pass for one linear-only model (see the module docstring). The model's parameter
    tensors are looked up once, here: replace one (rather than update it in place, as training
    and load_state_dict do) and a new LinearPass is needed."""

    def __init__(self, model: nn.Module):
        if not linear_only(model):
            raise ValueError("LinearPass needs a model of nn.Linear and per-sample modules only, without hooks")
        self.params = [p for p in model.parameters() if p.requires_grad]
        index = {id(p): k for k, p in enumerate(self.params)}
        # per leaf (module, forward, backward, layer): a per-sample module's passes, or for an
        # nn.Linear layer = (weight, bias, the index in params of its weight and of its bias, None
        # where not trained)
        self.chain = []
        for mod in leaves(model):
            if type(mod) is nn.Linear:
                layer = (mod.weight, mod.bias, index.get(id(mod.weight)), index.get(id(mod.bias)))
                self.chain.append((mod, None, None, layer))
            else:
                self.chain.append((mod, *PER_SAMPLE_PASSES[type(mod)], None))
        # the backward stops at the first trained layer: nothing before it needs a gradient
        self.first_trained = next((k for k, (_, _, _, layer) in enumerate(self.chain)
                                   if layer is not None and layer[2:] != (None, None)), len(self.chain))
        self._workspace: list[torch.Tensor | None] = [None] * len(self.params)  # per parameter (T_max, *shape)
        self._views: tuple[int, list[torch.Tensor]] | None = None  # (T, its blocks)
        self._rows = torch.empty(0, dtype=torch.int64)  # 0, 1, 2, ...: the rows of the labels' entries in d

    def __call__(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, T: int = 0, m: int = 0
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor | None], torch.Tensor, torch.Tensor]:
        """The gradient of Σ_rows weight·cross-entropy. Rows 0..T·m-1 of x are T groups of m.

        Returns (blocks (T, *p.shape) per parameter: each group's gradient, [] when T is 0;
        the gradient of the rows after the groups per parameter, None where there are none;
        their logits; their per-sample losses). The blocks are views of a workspace that the next
        call overwrites (a fresh multi-megabyte tensor each step costs its page faults, a third
        of the matmul's time on a CPU): use them before calling again.
        """
        n, rows = T * m, x.shape[0]
        blocks = self._blocks(T) if T else []
        written = [False] * len(self.params)  # every trained layer is reached, so all end True
        rest: list[torch.Tensor | None] = [None] * len(self.params)  # the gradient of rows n:
        with torch.no_grad():
            steps = []  # (its input, its output) per leaf
            h = x
            for mod, forward, _, layer in self.chain:
                out = forward(mod, h) if layer is None else F.linear(h, layer[0], layer[1])
                steps.append((h, out))
                h = out
            log_p = torch.log_softmax(h, dim=1)
            losses = F.nll_loss(log_p, y, reduction="none")
            d = log_p.exp_().mul_(weight[:, None])  # w·(softmax − one-hot of the label): d loss / d logits
            d.index_put_((self._row_index(rows, d.device), y), -weight, accumulate=True)
            for k in range(len(steps) - 1, self.first_trained - 1, -1):
                (mod, _, backward, layer), (inp, out) = self.chain[k], steps[k]
                if layer is None:
                    d = backward(mod, d, inp, out)
                    continue
                self._layer(layer, d, inp, n, T, blocks, written, rest)
                if k > self.first_trained:
                    d = d @ layer[0]
        if n:
            h, losses = h[n:], losses[n:]
        return blocks, rest, h, losses

    @staticmethod
    def _layer(layer: tuple, d_out: torch.Tensor, inp: torch.Tensor, n: int, T: int, blocks: list, written: list,
               rest: list) -> None:
        """One layer's gradients: per group from rows :n into its blocks, of rows n: into `rest`,
        each added to what an earlier call of the same layer left (a layer used twice)."""
        _, _, w_index, b_index = layer
        o, i, rows = d_out.shape[-1], inp.shape[-1], d_out.shape[0]
        if n:
            dm, am = d_out[:n].reshape(T, -1, o), inp[:n].reshape(T, -1, i)  # (T, m·…, ·)
        if rows > n:
            dr, ar = d_out[n:], inp[n:]
            if dr.dim() > 2:  # a layer applied to (rows, …, i)
                dr, ar = dr.reshape(-1, o), ar.reshape(-1, i)
        for k, is_weight in ((w_index, True), (b_index, False)):
            if k is None:
                continue
            if n:
                again = written[k]
                if is_weight:
                    group = torch.bmm(dm.transpose(1, 2), am, out=None if again else blocks[k])
                else:
                    group = torch.sum(dm, dim=1, out=None if again else blocks[k])
                if again:
                    blocks[k] += group
                written[k] = True
            if rows > n:
                current = dr.T @ ar if is_weight else dr.sum(dim=0)
                rest[k] = current if rest[k] is None else rest[k] + current

    def _row_index(self, rows: int, device: torch.device) -> torch.Tensor:
        if len(self._rows) < rows or self._rows.device != device:
            self._rows = torch.arange(max(rows, 2 * len(self._rows)), device=device)
        return self._rows[:rows]

    def _blocks(self, T: int) -> list[torch.Tensor]:
        """Per parameter a (T, *shape) block of the workspace, which grows when T outgrows it."""
        if self._views is None or self._views[0] != T:
            for k, p in enumerate(self.params):
                if self._workspace[k] is None or self._workspace[k].shape[0] < T:
                    self._workspace[k] = torch.empty(T, *p.shape, dtype=p.dtype, device=p.device)
            self._views = (T, [w[:T] for w in self._workspace])
        return self._views[1]
