"""The serving snapshot: a frozen copy of the model and its version, published by the training
worker between updates. Predict and Evaluate only ever read a published snapshot, never the module
being trained, so answers are consistent (one version per call) and never wait for a training step.

A reader takes the current snapshot with `SnapshotHolder.reading()` and keeps it for the whole
call, even if newer ones are published meanwhile. Publishing swaps one reference under a lock.
Copying a whole module (`copy.deepcopy`) costs more than a small model's training step, so the
holder keeps the last few retired snapshots and refreshes one that no reader holds by copying the
weights into it in place; a snapshot being read is never written.

Whoever must follow publications (WatchModel, for replicas: server/watch.py) waits with
`wait_published`, which wakes at each publication and gives the newest snapshot, so a slow
follower skips the versions published meanwhile.
"""
from __future__ import annotations

import copy
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from cl_engine.learner import eval_batch_of
from cl_engine.precision import model_autocast


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    """What a snapshot copies of a module: its parameters, then its buffers."""
    return [*model.parameters(), *model.buffers()]


class Snapshot:
    def __init__(self, model: nn.Module, version: int, device: torch.device, source: nn.Module | None = None):
        self.model = model
        self.version = version
        self.device = device
        self.readers = 0  # calls answering from it now; changed only under the holder's lock
        self.published_at = 0.0  # Unix time of its last publication; set under the holder's lock
        self._source = source
        self._source_tensors = _tensors(source) if source is not None else []
        self._own_tensors = _tensors(model)  # listed once: walking the modules costs about as much as the copy
        self.batch = eval_batch_of(model)  # the learner's evaluation batch

    @classmethod
    def of(cls, model: nn.Module, version: int, device: torch.device) -> "Snapshot":
        """A copy of `model` on `device`, in eval mode, without gradients; call only from the thread
        training it (or holding the lock its writer takes)."""
        frozen = copy.deepcopy(model).to(device)
        for p in frozen.parameters():
            p.grad = None
            p.requires_grad_(False)
        return cls(frozen.eval(), version, device, source=model)

    def refresh(self, model: nn.Module, version: int) -> bool:
        """Copy `model`'s weights into this snapshot in place, if it is a copy of that very module
        with the same tensors; False (nothing written) otherwise. Only for a snapshot nobody reads."""
        if model is not self._source:
            return False
        current = _tensors(model)
        if len(current) != len(self._source_tensors) or any(a is not b for a, b in zip(current, self._source_tensors)):
            return False
        with torch.no_grad():
            for dst, src in zip(self._own_tensors, current):
                dst.copy_(src)
        self.version = version
        return True

    @torch.inference_mode()
    def logits(self, x: torch.Tensor, view: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """The model's logits for x; `view` (the learner's evaluation view, cl_engine/views.py) turns each
        batch, on the device, into model inputs as the learner does (uint8 scaled, normalised); the forward
        runs in the learner's precision (the model carries its mark: cl_engine/precision.py)."""
        view = view or (lambda b: b.float())
        with model_autocast(self.model, self.device):
            return torch.cat([self.model(view(x[i: i + self.batch].to(self.device))).float().cpu()
                              for i in range(0, len(x), self.batch)])


class SnapshotHolder:
    SPARES = 2  # retired snapshots kept for reuse

    def __init__(self) -> None:
        self._current: Snapshot | None = None
        self._retired: list[Snapshot] = []
        self._lock = threading.Lock()
        self._published = threading.Condition(self._lock)
        self.publications = 0  # how many snapshots have been published; changed only under the lock

    @contextmanager
    def reading(self) -> Iterator[Snapshot | None]:
        """The current snapshot (None before the first), held unchanged until the block ends."""
        with self._lock:
            snapshot = self._current
            if snapshot is not None:
                snapshot.readers += 1
        try:
            yield snapshot
        finally:
            if snapshot is not None:
                with self._lock:
                    snapshot.readers -= 1

    def publish_model(self, model: nn.Module, version: int, device: torch.device) -> None:
        """Publish `model` as it is now; call only from the thread training it."""
        with self._lock:
            spare = next((s for s in self._retired if s.readers == 0), None)
            if spare is not None:
                self._retired.remove(spare)
        if spare is None or not spare.refresh(model, version):
            spare = Snapshot.of(model, version, device)
        self.publish(spare)

    def publish(self, snapshot: Snapshot) -> None:
        with self._lock:
            old, self._current = self._current, snapshot
            snapshot.published_at = time.time()
            self.publications += 1
            if old is not None:
                self._retired.append(old)
                del self._retired[:-self.SPARES]  # a reader still holding a dropped one keeps it alive
            self._published.notify_all()

    def wait_published(self, after: int, timeout: float) -> int:
        """Wait up to `timeout` seconds until more than `after` snapshots have been published; returns
        the count now (`after` itself when none came)."""
        with self._published:
            self._published.wait_for(lambda: self.publications > after, timeout)
            return self.publications

    def current(self) -> Snapshot | None:
        """The current snapshot, for a look (its version); to answer from it, use `reading()`."""
        return self._current

    @property
    def version(self) -> int:
        s = self._current
        return s.version if s is not None else 0
