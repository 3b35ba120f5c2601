"""Per-bucket memory gradients for GEM: the loss gradient on each past bucket's memories.

They come as blocks, one per trainable parameter in `parameters()` order, each of shape
(T, *parameter.shape): row t of every block together is bucket t's gradient (a row of GEM's
G). Blocks, not one flat (T, P) matrix, so that nothing is copied to flatten them and the
projection can work on them, and on the batch's gradient, in place.

Three paths, all exact, chosen once by the model's make-up:
- "linear": nn.Linear layers and parameter-free per-sample modules only, without hooks (the `mlp`
  and `linear` models). One forward over all T·m memories, run leaf by leaf to keep each layer's
  input and output (no hooks to register and remove each step: 5% of a step; module hooks added
  after the path was chosen are not run), one backward that stops at the layers' outputs, then
  each layer's per-bucket weight gradient as one batched matmul of its inputs and output
  gradients grouped by bucket: the work of one forward and backward over T·m samples, the floor.
  The blocks are written into a workspace kept between steps (a fresh multi-megabyte tensor each
  step costs its page faults, a third of the matmul's time on a CPU).
- "vmap": other models without batch norm; torch.func's vmap over buckets, one batched pass.
- "loop": batch norm keeps running statistics that neither batched way updates as the
  per-bucket passes do, so such models take one forward and backward per bucket.
The memories come from `ReplayBuffer.grouped`: a view of the storage when the buckets hold equal
runs of slots (as bucket retention keeps them), else a padded copy made once per change.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from ..buffer import ReplayBuffer
from .base import ensure_training

# Modules that hold no parameters and treat each sample on its own (no batch statistics, no
# randomness); a model made of these and nn.Linear takes the "linear" path.
PER_SAMPLE = (nn.Sequential, nn.Flatten, nn.Identity, nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh,
              nn.Sigmoid)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def linear_only(model: nn.Module) -> bool:
    """Every module is an nn.Linear or a parameter-free per-sample module of PER_SAMPLE (exact types),
    with no hooks: such a model is a chain of its leaves (`leaves`), which the "linear" path runs
    itself."""
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


def gradient_path(model: nn.Module) -> str:
    if has_batchnorm(model):
        return "loop"
    return "linear" if linear_only(model) else "vmap"


class MemoryGradients:
    """G for one model, as blocks; see the module docstring. `path` forces a path (for tests).

    On the "linear" path the blocks returned are views of a workspace that the next call
    overwrites: use them before calling again.
    """

    def __init__(self, model: nn.Module, path: str | None = None):
        self.model = model
        self.path = path or gradient_path(model)
        if self.path not in ("linear", "vmap", "loop"):
            raise ValueError(f"unknown gradient path {self.path!r}")
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.trained_layers = {m for m in model.modules() if type(m) is nn.Linear and any(
            p.requires_grad for p in m.parameters(recurse=False))}
        self.chain = list(leaves(model)) if self.path == "linear" else []
        self._workspace: dict[int, torch.Tensor] = {}  # id(parameter) -> (T_max, *shape)
        self._views: tuple[int, dict[int, torch.Tensor]] | None = None  # (T, its blocks)
        self._staging: dict | None = None  # with_batch: the memories and room for a batch, one buffer version

    def __call__(self, buffer: ReplayBuffer, buckets: list[int]) -> list[torch.Tensor]:
        """Per-parameter blocks (T, *p.shape) of the mean-loss gradient on each bucket's memories.

        The "linear" and "vmap" paths leave the parameters' `.grad` alone; the "loop" path runs
        ordinary backward passes (updating batch-norm statistics) and leaves `.grad` set to None.
        """
        ensure_training(self.model)
        x, y, counts = buffer.grouped(buckets)
        return {"linear": self._grouped_linear, "vmap": self._vmap, "loop": self._loop}[self.path](x, y, counts)

    def _blocks(self, T: int) -> dict[int, torch.Tensor]:
        """id(parameter) -> a (T, *shape) block of the workspace, which grows when T outgrows it."""
        if self._views is None or self._views[0] != T:
            for p in self.params:
                storage = self._workspace.get(id(p))
                if storage is None or storage.shape[0] < T:
                    self._workspace[id(p)] = torch.empty(T, *p.shape, dtype=p.dtype, device=p.device)
            self._views = (T, {id(p): self._workspace[id(p)][:T] for p in self.params})
        return self._views[1]

    def with_batch(self, buffer: ReplayBuffer, buckets: list[int], x: torch.Tensor, y: torch.Tensor
                   ) -> tuple[list[torch.Tensor], list[torch.Tensor | None], torch.Tensor, torch.Tensor]:
        """"linear" path only: the memories' blocks and the incoming batch's own gradient in one pass.

        One forward and one backward over the memories and the batch together, the floor's exact
        shape. Returns (blocks, batch gradient per parameter (None where the loss does not reach
        it), the batch's logits, its per-sample losses). The memories are staged once per change
        of the buffer next to a few rows for the batch, so each step copies only the batch.
        """
        if self.path != "linear":
            raise ValueError(f"with_batch needs the linear path, this model takes {self.path!r}")
        ensure_training(self.model)
        xs, ys, ws, T, m = self._stage(buffer, buckets, x, y)
        return self._linear(xs, ys, ws, T, m)

    def _stage(self, buffer: ReplayBuffer, buckets: list[int], x: torch.Tensor, y: torch.Tensor):
        xm, ym, counts = buffer.grouped(buckets)
        T, m = ym.shape
        n, b = T * m, len(y)
        key = (id(buffer), buffer.version, tuple(buckets))
        st = self._staging
        if (st is None or st["key"] != key or st["x"].shape[0] < n + b or st["x"].shape[1:] != xm.shape[2:]
                or st["x"].dtype != xm.dtype):
            xs = torch.empty(n + b, *xm.shape[2:], dtype=xm.dtype, device=xm.device)
            ys = torch.empty(n + b, dtype=ym.dtype, device=ym.device)
            ws = torch.empty(n + b, dtype=xm.dtype, device=xm.device)
            xs[:n] = xm.reshape(n, *xm.shape[2:])
            ys[:n] = ym.reshape(-1)
            # padding weighs nothing, a real memory 1/count of its bucket: the loss is the sum of bucket means
            ws[:n] = ((torch.arange(m, device=xm.device) < counts[:, None]) / counts[:, None]).reshape(-1)
            st = self._staging = {"key": key, "x": xs, "y": ys, "w": ws}
        st["x"][n: n + b] = x
        st["y"][n: n + b] = y
        st["w"][n: n + b] = 1.0 / b
        return st["x"][: n + b], st["y"][: n + b], st["w"][: n + b], T, m

    def _grouped_linear(self, x: torch.Tensor, y: torch.Tensor, counts: torch.Tensor) -> list[torch.Tensor]:
        T, m = y.shape
        if bool((counts == m).all()):
            weight = torch.full((T * m,), 1.0 / m, dtype=x.dtype, device=x.device)
        else:
            weight = ((torch.arange(m, device=x.device) < counts[:, None]) / counts[:, None]).reshape(-1).to(x.dtype)
        return self._linear(x.reshape(T * m, *x.shape[2:]), y.reshape(-1), weight, T, m)[0]

    def _linear(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, T: int, m: int):
        """Rows 0..T·m-1 of x are the memories, bucket by bucket; any rows after them, a batch."""
        n = T * m
        calls: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]] = []  # (layer, its input, its output)
        with torch.enable_grad():
            h = x  # the model's forward, leaf by leaf, keeping each layer's input and output
            for mod in self.chain:
                if type(mod) is nn.Linear:
                    out = F.linear(h, mod.weight, mod.bias)
                    if mod in self.trained_layers:
                        calls.append((mod, h, out))
                    h = out
                else:
                    h = mod(h)
            logits = h
            losses = F.cross_entropy(logits, y, reduction="none")
            d_outs = torch.autograd.grad((losses * weight).sum(), [out for _, _, out in calls], allow_unused=True)
        rows = x.shape[0]
        blocks = self._blocks(T)
        written: set[int] = set()
        batch: dict[int, torch.Tensor] = {}  # id(parameter) -> the batch's gradient
        with torch.no_grad():
            for (mod, inp, _), d_out in zip(calls, d_outs):
                if d_out is None:  # a layer whose output the loss does not use
                    continue
                o, i = d_out.shape[-1], inp.shape[-1]
                dm, am = d_out[:n].reshape(T, -1, o), inp[:n].reshape(T, -1, i)  # (T, m·…, ·)
                if rows > n:
                    db, ab = d_out[n:].reshape(-1, o), inp[n:].reshape(-1, i)
                for p, is_weight in ((mod.weight, True), (mod.bias, False)):
                    if p is None or not p.requires_grad:
                        continue
                    block, again = blocks[id(p)], id(p) in written  # again: a layer called more than once
                    if is_weight:
                        memory = torch.bmm(dm.transpose(1, 2), am, out=None if again else block)
                    else:
                        memory = torch.sum(dm, dim=1, out=None if again else block)
                    if again:
                        block += memory
                    written.add(id(p))
                    if rows > n:
                        current = db.T @ ab if is_weight else db.sum(dim=0)
                        batch[id(p)] = batch[id(p)] + current if id(p) in batch else current
        for p in self.params:
            if id(p) not in written:
                blocks[id(p)].zero_()
        return ([blocks[id(p)] for p in self.params], [batch.get(id(p)) for p in self.params], logits[n:].detach(),
                losses[n:].detach())

    def _vmap(self, x: torch.Tensor, y: torch.Tensor, counts: torch.Tensor) -> list[torch.Tensor]:
        model = self.model
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        params = {n: p.detach() for n, p in named}
        if bool((counts == x.shape[1]).all()):  # no padding: a plain mean per bucket
            def bucket_loss(params, x, y):
                return F.cross_entropy(functional_call(model, params, (x,)), y)

            grads = vmap(grad(bucket_loss), in_dims=(None, 0, 0))(params, x, y)
        else:
            weight = (torch.arange(x.shape[1], device=x.device) < counts[:, None]).to(x.dtype)

            def bucket_loss(params, x, y, w):
                logits = functional_call(model, params, (x,))
                return (F.cross_entropy(logits, y, reduction="none") * w).sum() / w.sum()

            grads = vmap(grad(bucket_loss), in_dims=(None, 0, 0, 0))(params, x, y, weight)
        return [grads[n] for n, _ in named]

    def _loop(self, x: torch.Tensor, y: torch.Tensor, counts: torch.Tensor) -> list[torch.Tensor]:
        model = self.model
        blocks = [torch.zeros(len(counts), *p.shape, dtype=p.dtype, device=p.device) for p in self.params]
        for t, n in enumerate(counts.tolist()):
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[t, :n]), y[t, :n]).backward()
            for block, p in zip(blocks, self.params):
                if p.grad is not None:
                    block[t] = p.grad
        model.zero_grad(set_to_none=True)
        return blocks


def flatten_blocks(blocks: list[torch.Tensor]) -> torch.Tensor:
    """Blocks (T, *shape) as one (T, P) matrix: G, in parameters() order."""
    return torch.cat([b.reshape(b.shape[0], -1) for b in blocks], dim=1)


def memory_gradients(model: nn.Module, buffer: ReplayBuffer, buckets: list[int]) -> list[torch.Tensor]:
    """One-off MemoryGradients(model)(buffer, buckets): fresh blocks, no workspace kept."""
    return MemoryGradients(model)(buffer, buckets)


def per_bucket_gradients(model: nn.Module, buffer: ReplayBuffer, buckets: list[int]) -> torch.Tensor:
    """G (T, P): the gradient of the mean loss on each bucket's memories, in parameters() order."""
    return flatten_blocks(memory_gradients(model, buffer, buckets))
