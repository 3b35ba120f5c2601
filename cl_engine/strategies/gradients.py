"""Per-bucket memory gradients for GEM: one flattened loss gradient per past bucket, rows of G.

Models without batch norm take the fast path: torch.func's vmap over buckets turns T separate
backward passes into one batched pass over all memories (the cost of a single forward and
backward over T·m samples). Batch norm keeps running statistics that vmap cannot update, so
such models take one forward and backward per bucket.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from ..buffer import ReplayBuffer
from .base import flat_grad


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _padded_groups(buffer: ReplayBuffer, buckets: list[int]):
    """Memories of each bucket stacked as [T, m, ...] with a 0/1 weight marking the padding."""
    groups = [buffer.slots(torch.tensor([b])) for b in buckets]
    m = max(len(s) for s in groups)
    slots = torch.zeros(len(groups), m, dtype=torch.int64, device=buffer.device)
    weight = torch.zeros(len(groups), m, device=buffer.device)
    for t, s in enumerate(groups):
        slots[t, : len(s)] = s
        weight[t, : len(s)] = 1.0
    x, y = buffer.get(slots.flatten())
    return x.view(len(groups), m, *x.shape[1:]), y.view(len(groups), m), weight


def per_bucket_gradients(model: nn.Module, buffer: ReplayBuffer, buckets: list[int]) -> torch.Tensor:
    """G (T, P): the gradient of the mean loss on each bucket's memories, in parameters() order."""
    model.train()
    if has_batchnorm(model):
        rows = []
        for b in buckets:
            model.zero_grad(set_to_none=True)
            x, y = buffer.get(buffer.slots(torch.tensor([b])))
            F.cross_entropy(model(x), y).backward()
            rows.append(flat_grad(model))
        model.zero_grad(set_to_none=True)
        return torch.stack(rows)

    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    x, y, weight = _padded_groups(buffer, buckets)

    def bucket_loss(params, x, y, w):
        logits = functional_call(model, params, (x,))
        return (F.cross_entropy(logits, y, reduction="none") * w).sum() / w.sum()

    grads = vmap(grad(bucket_loss), in_dims=(None, 0, 0, 0))(params, x, y, weight)
    return torch.cat([grads[n].reshape(len(buckets), -1) for n in names], dim=1)
