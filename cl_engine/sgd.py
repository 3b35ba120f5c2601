"""The SGD update from a list of gradients: what `torch.optim.SGD.step()` does, minus its per-call
overhead (hooks, profiler ranges, grouping: about 50 µs a call, a tenth of a small model's step).

The optimizer stays the holder of the hyperparameters and of the momentum buffers, so its
state_dict is still the checkpoint format; this applies its update op for op as its CPU default
(the single-tensor loop) does, so the weights come out bit for bit those of `optimizer.step()`.
The gradients come from `torch.autograd.grad`: nothing accumulates in `.grad`, nothing is zeroed.
"""
from __future__ import annotations

import torch


def sgd_step(optimizer: torch.optim.SGD, params: list[torch.Tensor], grads: list[torch.Tensor | None]) -> None:
    """One update of `params` by `grads` (None: the parameter is left alone, as by torch)."""
    if len(optimizer.param_groups) != 1:
        raise ValueError(f"sgd_step applies one parameter group; this optimizer has {len(optimizer.param_groups)}")
    group = optimizer.param_groups[0]
    lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]
    dampening, nesterov, maximize = group["dampening"], group["nesterov"], group["maximize"]
    with torch.no_grad():
        for p, grad in zip(params, grads):
            if grad is None:
                continue
            if maximize:
                grad = -grad
            if weight_decay != 0:
                grad = grad.add(p, alpha=weight_decay)
            if momentum != 0:
                state = optimizer.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = grad.detach().clone()
                else:
                    buf.mul_(momentum).add_(grad, alpha=1 - dampening)
                grad = grad.add(buf, alpha=momentum) if nesterov else buf
            p.add_(grad, alpha=-lr)
