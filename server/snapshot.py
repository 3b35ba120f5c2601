"""The serving snapshot: a frozen copy of the model and its version, published by the training
worker between updates. Predict and Evaluate only ever read a published snapshot, never the module
being trained, so answers are consistent (one version per call) and never wait for a training step.

Publishing swaps one reference (atomic in CPython); a reader keeps the snapshot it took for the
whole call, even if a newer one is published meanwhile.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

EVAL_BATCH = 512


class Snapshot:
    def __init__(self, model: nn.Module, version: int, device: torch.device):
        self.model = model
        self.version = version
        self.device = device

    @classmethod
    def of(cls, model: nn.Module, version: int, device: torch.device) -> "Snapshot":
        """A copy of `model` in eval mode without gradients; call only from the thread training it."""
        frozen = copy.deepcopy(model)
        for p in frozen.parameters():
            p.grad = None
            p.requires_grad_(False)
        return cls(frozen.eval(), version, device)

    @torch.inference_mode()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.model(x[i: i + EVAL_BATCH].to(self.device, torch.float32)).float().cpu()
                          for i in range(0, len(x), EVAL_BATCH)])


class SnapshotHolder:
    def __init__(self) -> None:
        self._current: Snapshot | None = None

    def publish(self, snapshot: Snapshot) -> None:
        self._current = snapshot

    def current(self) -> Snapshot | None:
        return self._current

    @property
    def version(self) -> int:
        s = self._current
        return s.version if s is not None else 0
