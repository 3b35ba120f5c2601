"""The operations the gRPC threads queue for the training worker (server/worker.py), their results, and
the CallScope that drops an operation unapplied once an earlier one of its call failed or the call ended."""
from __future__ import annotations

import itertools
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import torch

from .codec import EncodedBatch
from .errors import Cancelled, ResourceExhausted, Unavailable
from .schema import Schema


class CallScope:
    """The operations one gRPC call submitted. Once failed (or its call ended), the rest are dropped."""

    _keys = itertools.count(1)

    def __init__(self):
        self._failed = threading.Event()
        self.key = next(self._keys)  # names the scope to a learner process

    @classmethod
    def of(cls, context) -> "CallScope":
        """A scope that fails when the gRPC call ends: told by gRPC's termination callback, so that
        checking it is one flag read, not `context.is_active()`, which takes the call's lock."""
        scope = cls()
        if not context.add_callback(scope.fail):  # False: the call has already ended
            scope.fail()
        return scope

    def fail(self) -> None:
        self._failed.set()

    @property
    def live(self) -> bool:
        return not self._failed.is_set()


@dataclass
class Op:
    scope: CallScope
    future: Future = field(default_factory=Future, init=False)


@dataclass
class TrainOp(Op):
    stream_id: str
    sequence: int
    bucket: int
    x: torch.Tensor | EncodedBatch  # encoded images are decoded when the batch is applied, not before
    y: torch.Tensor
    schema: Schema
    ids: torch.Tensor | None = None  # sample identities within the bucket (TrainBatch.sample_ids), if sent
    bucket_batches: int = 0  # the bucket's planned batches (TrainBatch.bucket_batches); 0: not declared


@dataclass
class EndBucketOp(Op):
    bucket: int
    bucket_size: int | None
    expected: dict[str, int] = field(default_factory=dict)  # stream_id → sequence the caller expects applied


@dataclass
class RollbackOp(Op):
    version: int


@dataclass
class RegisterEvalOp(Op):
    bucket: int
    x: torch.Tensor
    y: torch.Tensor
    schema: Schema


@dataclass
class ForgetStreamOp(Op):
    stream_id: str


@dataclass
class TrainResult:
    applied: bool
    accuracy: float
    loss: float
    version: int
    samples_trained: int
    applied_sequence: int
    durable_sequence: int = 0
    skip_reason: str = ""  # the step guard's reason when the batch was consumed but not learned

    @property
    def learned(self) -> bool:
        return self.applied and not self.skip_reason


@dataclass
class ForgetStreamResult:
    stream_id: str
    sequence: int | None  # the mark dropped; None: there was none
    streams_known: int


@dataclass
class EndBucketResult:
    bucket: int
    row: list[float]
    metrics: dict[str, float]
    version: int
    open_bucket: int
    already_ended: bool
    checkpoint: str
    durable: bool = False


@dataclass
class RegisterResult:
    bucket: int
    num_samples: int
    already_registered: bool
    registered: list[int]


STOP = object()  # put on an operation queue after the last operation: the worker returns


def dropped() -> Cancelled:
    """The error of an operation dropped unapplied (its call failed or ended before it was reached)."""
    return Cancelled("dropped unapplied: an earlier operation of the same call failed, or the call ended")


def enqueue(ops: queue.Queue, op: "Op", timeout: float, accepting: Callable[[], bool]) -> Future:
    """Put `op` on the bounded queue `ops`, waiting up to `timeout` seconds for room while its call is
    alive: back-pressure for the sender, RESOURCE_EXHAUSTED past the wait."""
    deadline = time.monotonic() + timeout
    while True:
        if not accepting():
            raise Unavailable("the server is shutting down; send again after it restarts")
        if not op.scope.live:
            raise Cancelled("the call ended before its operation could be queued")
        try:
            ops.put(op, timeout=min(0.1, max(0.0, deadline - time.monotonic())))
            return op.future
        except queue.Full:
            if time.monotonic() >= deadline:
                raise ResourceExhausted(f"the training queue is full ({ops.maxsize} operations) and stayed "
                                        f"full for {timeout:g}s; send more slowly") from None
