"""Per-bucket memory gradients for GEM: the loss gradient on each past bucket's memories.

They come as blocks, one per trainable parameter in `parameters()` order, each of shape
(T, *parameter.shape): row t of every block together is bucket t's gradient (a row of GEM's
G). Blocks, not one flat (T, P) matrix, so that nothing is copied to flatten them and the
projection can work on them, and on the batch's gradient, in place.

Three paths, all exact, chosen once by the model's make-up:
- "linear": nn.Linear layers and parameter-free per-sample modules only, without hooks (the `mlp`
  and `linear` models): one `LinearPass` over all T·m memories, whose per-bucket weight
  gradients come out as batched matmuls of each layer's inputs and output gradients grouped by
  bucket: the work of one forward and backward over T·m samples, the floor. The incoming batch
  can ride in the same pass (`with_batch`).
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
from ..precision import model_autocast, precision_of
from .linear_pass import LinearPass, linear_only


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def gradient_path(model: nn.Module) -> str:
    if has_batchnorm(model):
        return "loop"
    return "linear" if linear_only(model) and precision_of(model) == "fp32" else "vmap"


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
        self.linear = LinearPass(model) if self.path == "linear" else None
        self._staging: dict | None = None  # with_batch: the memories and room for a batch, one buffer version

    def __call__(self, buffer: ReplayBuffer, buckets: list[int]) -> list[torch.Tensor]:
        """Per-parameter blocks (T, *p.shape) of the mean-loss gradient on each bucket's memories.

        The "linear" and "vmap" paths leave the parameters' `.grad` alone; the "loop" path runs
        ordinary backward passes (updating batch-norm statistics) and leaves `.grad` set to None.
        """
        ensure_training(self.model)
        x, y, counts = buffer.grouped(buckets)
        return {"linear": self._grouped_linear, "vmap": self._vmap, "loop": self._loop}[self.path](x, y, counts)

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
        return self.linear(xs, ys, ws, T, m)

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
        return self.linear(x.reshape(T * m, *x.shape[2:]), y.reshape(-1), weight, T, m)[0]

    def _vmap(self, x: torch.Tensor, y: torch.Tensor, counts: torch.Tensor) -> list[torch.Tensor]:
        model = self.model
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        params = {n: p.detach() for n, p in named}
        if bool((counts == x.shape[1]).all()):  # no padding: a plain mean per bucket
            def bucket_loss(params, x, y):
                with model_autocast(model):
                    logits = functional_call(model, params, (x,)).float()
                return F.cross_entropy(logits, y)

            grads = vmap(grad(bucket_loss), in_dims=(None, 0, 0))(params, x, y)
        else:
            weight = (torch.arange(x.shape[1], device=x.device) < counts[:, None]).to(x.dtype)

            def bucket_loss(params, x, y, w):
                with model_autocast(model):
                    logits = functional_call(model, params, (x,)).float()
                return (F.cross_entropy(logits, y, reduction="none") * w).sum() / w.sum()

            grads = vmap(grad(bucket_loss), in_dims=(None, 0, 0, 0))(params, x, y, weight)
        return [grads[n] for n, _ in named]

    def _loop(self, x: torch.Tensor, y: torch.Tensor, counts: torch.Tensor) -> list[torch.Tensor]:
        model = self.model
        blocks = [torch.zeros(len(counts), *p.shape, dtype=p.dtype, device=p.device) for p in self.params]
        for t, n in enumerate(counts.tolist()):
            model.zero_grad(set_to_none=True)
            with model_autocast(model):
                logits = model(x[t, :n]).float()
            F.cross_entropy(logits, y[t, :n]).backward()
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
