"""The training worker in a process of its own (`--learner-process`), so that training never holds
the GIL the gRPC threads need: on a small model the step's Python glue otherwise competes with
decoding the next batch, sending acks and answering Predict.

The server process keeps what faces gRPC: the bounded queue (back-pressure and RESOURCE_EXHAUSTED
unchanged), the serving snapshots and the Prometheus metrics. The learner process runs the very
same TrainingWorker, with stand-ins for those three that relay to the server process:

    gRPC threads ─▶ queue ─▶ feeder thread ─▶ pipe ─▶ learner process: TrainingWorker.process(op)
    futures, schema, metrics, status ◀─ receiver thread ◀─ pipe ◀─┘   │
    snapshots (Predict) ◀─ copied under the lock ◀─ shared memory ◀─ weights

At most PIPELINE operations are in the pipe at once, so the learner always has the next one ready
while a call's later operations still wait in the queue, where a failed or ended call drops them.
The weights cross once as a module in shared memory; each publication copies them into it under a
lock together with their version, and the server process copies them out into a snapshot under the
same lock, so a snapshot is never torn and always carries the version of the weights it holds.
If the learner process dies, what it had taken is answered UNAVAILABLE, nothing more is taken, and
Predict goes on answering from the last snapshot.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import sys
import threading
from concurrent.futures import Future
from dataclasses import dataclass, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch
import torch.multiprocessing  # noqa: F401  registers the reductions that send tensors through shared memory
from torch import nn

from .checkpoint import CheckpointStore
from .errors import ServiceError, Unavailable
from .metrics import ServerMetrics
from .schema import Schema, SchemaHolder
from .snapshot import Snapshot, SnapshotHolder
from .durability import check_checkpoint
from .operations import STOP, EndBucketOp, ForgetStreamOp, Op, RegisterEvalOp, RollbackOp, TrainOp, dropped, enqueue
from .worker import TrainingWorker, WorkerOptions
from .worker_status import StatusBoard

log = logging.getLogger(__name__)
PIPELINE = 8  # operations sent to the learner process and not yet answered, at most
SHARED_TENSOR_BYTES = 1 << 20  # a tensor this large crosses through shared memory, a smaller one through the pipe
START_SECONDS = 120.0  # how long start() waits for the learner process to load its checkpoint and report ready
OPS = {cls.__name__: cls for cls in (TrainOp, EndBucketOp, RegisterEvalOp, ForgetStreamOp, RollbackOp)}


@dataclass
class ProcessOptions:
    """What the learner process needs besides the worker's options (picklable)."""
    worker: WorkerOptions
    schema: Schema | None  # the server's, if known at start (fixed by the settings, or the checkpoint's)
    log_level: int
    nice: int  # added to the learner process's niceness: when cores are short, serving goes first


def _pack(value):
    if isinstance(value, torch.Tensor) and value.element_size() * value.nelement() < SHARED_TENSOR_BYTES:
        return value.numpy()
    return value


def _unpack(value):
    return torch.from_numpy(value) if isinstance(value, np.ndarray) else value


class LearnerProcess:
    """The server-process half: TrainingWorker's interface (submit, status, queue depth, restore,
    start, stop) for the service, with the worker itself in a child process."""

    def __init__(self, options: WorkerOptions, schemas: SchemaHolder, snapshots: SnapshotHolder,
                 metrics: ServerMetrics, *, log_level: int = logging.INFO, nice: int = 0,
                 on_exit: Callable[[str], None] | None = None,
                 on_durability: Callable[[bool, str], None] | None = None):
        self.options = options
        self.log_level, self.nice = log_level, nice
        self.on_exit = on_exit  # told why, once, if the learner process dies while the server runs
        self.on_durability = on_durability  # told when the learner's state stops or starts being durable
        self._final: dict | None = None  # the learner process's last word: is its final state durable
        self.schemas = schemas
        self.snapshots = snapshots
        self.metrics = metrics
        self.queue: queue.Queue = queue.Queue(maxsize=options.queue_size)
        self.queue_size = options.queue_size
        self._context = multiprocessing.get_context("spawn")  # never fork a process that runs gRPC threads
        self._weights_lock = self._context.Lock()
        self._weights_version = self._context.Value("q", 0, lock=False)
        self._board = StatusBoard(self._context.Event())  # the learner process's worker builds on request too
        self._shared_model: nn.Module | None = None  # the learner's weights, in shared memory
        self._device = torch.device("cpu")  # the learner's, where snapshots answer
        self._restore: tuple[dict, Path | None] | None = None
        self._process = None
        self._conn = None
        self._feeder: threading.Thread | None = None
        self._receiver: threading.Thread | None = None
        self._window = threading.Semaphore(PIPELINE)
        self._in_flight: dict[int, Op] = {}
        self._next_id = 0
        self._accepting = True
        self._exited: str | None = None  # why the learner process is gone, once it is
        self._ready = threading.Event()
        self._ops_done = 0  # operations the learner process answered (applied or refused)

    # -- life cycle ---------------------------------------------------------------------------------

    def restore(self, state: dict, path: Path | None = None) -> None:
        """Check the checkpoint here (ValueError naming why it does not fit); the learner process loads it."""
        check_checkpoint(state, self.options.config, self.schemas, path)
        self._restore = (state, path)

    def start(self) -> None:
        parent, child = self._context.Pipe()
        self._process = self._context.Process(
            target=learner_main, name="clstream-learner", daemon=True,
            args=(child, ProcessOptions(self.options, self.schemas.schema, self.log_level, self.nice), self._restore,
                  self._weights_lock, self._weights_version, self._board.wanted))
        self._process.start()
        child.close()
        self._conn = parent
        self._restore = None  # the learner process holds it now
        self._receiver = threading.Thread(target=self._receive, name="clstream-learner-receiver", daemon=True)
        self._receiver.start()
        self._ready.wait(START_SECONDS)
        if not self._ready.is_set() or self._exited is not None:
            self._process.kill()
            raise RuntimeError(self._exited or f"the learner process did not report ready within {START_SECONDS:g}s")
        self._feeder = threading.Thread(target=self._feed, name="clstream-learner-feeder", daemon=True)
        self._feeder.start()

    def stop(self, timeout: float | None = None) -> dict:
        """Stop taking operations; the learner process applies those already queued, writes the final
        checkpoint and exits. Returns the final state's durability (as TrainingWorker.stop)."""
        self._accepting = False
        if self._feeder is None:
            return {"durable": self.options.checkpoint_dir is None, "error": self._exited or "not started",
                    "batches_lost": 0, "last_checkpoint": "", "checkpoints": self.options.checkpoint_dir is not None}
        self.queue.put(STOP)
        for thread in (self._feeder, self._receiver):
            thread.join(timeout)
        self._process.join(timeout)
        if self._process.is_alive():
            log.error("the learner process did not finish within %.0fs; stopped without a final checkpoint",
                      timeout or 0)
            self._process.kill()
        self._fail_queued(Unavailable("the server is shutting down; send again after it restarts"))
        if self._final is not None:
            return self._final
        status = self._board.status
        return {"durable": self.options.checkpoint_dir is None, "checkpoints": self.options.checkpoint_dir is not None,
                "error": self._exited or "the learner process did not report its final checkpoint",
                "batches_lost": status.get("batches_since_checkpoint", 0),
                "last_checkpoint": status.get("last_checkpoint", "")}

    # -- the service's side (gRPC threads) ----------------------------------------------------------

    def submit(self, op: Op, timeout: float) -> Future:
        if self._exited is not None:
            raise self._gone()
        return enqueue(self.queue, op, timeout, lambda: self._accepting)

    @property
    def queue_depth(self) -> int:
        return self.queue.qsize() + max(0, len(self._in_flight) - 1)

    def status(self) -> dict:
        """As TrainingWorker.status: the status after the last answered operation."""
        return self._board.current(self._ops_done, lambda: self._exited is None)

    # -- feeder and receiver threads ----------------------------------------------------------------

    def _feed(self) -> None:
        while True:
            op = self.queue.get()
            if op is STOP:
                self._send(("stop",))
                return
            if not op.scope.live:
                op.future.set_exception(dropped())
                continue
            while not self._window.acquire(timeout=0.5):
                if self._exited is not None:
                    break
            if self._exited is not None:
                op.future.set_exception(self._gone())
                self._fail_queued(self._gone())
                continue
            self._next_id += 1
            op_id = self._next_id
            self._in_flight[op_id] = op
            wire = {f.name: _pack(getattr(op, f.name)) for f in fields(op) if f.init and f.name != "scope"}
            self._send(("op", op_id, op.scope.key, type(op).__name__, wire))
            if self._exited is not None and self._in_flight.pop(op_id, None) is not None:  # it died meanwhile
                op.future.set_exception(self._gone())

    def _send(self, message) -> None:
        try:
            self._conn.send(message)
        except (OSError, ValueError):  # the learner process is gone; the receiver says so
            pass

    def _receive(self) -> None:
        try:
            while True:
                for message in self._conn.recv():  # one list of news per operation
                    if self._dispatch(message):
                        return
        except (EOFError, OSError):
            self._process.join(1.0)
            code = self._process.exitcode  # None if it closed the pipe and is not gone within the second
            self._exited = f"the learner process exited ({'no exit code yet' if code is None else f'exit code {code}'})"
            log.error("%s; training is off until the server restarts, Predict answers from the last snapshot",
                      self._exited)
            if self.on_exit is not None:
                self.on_exit(self._exited)
        finally:
            self._ready.set()
            if self._exited is not None:
                for op_id in list(self._in_flight):
                    self._in_flight.pop(op_id).future.set_exception(self._gone())
                self._window.release(PIPELINE)
                self._board.wake()

    def _dispatch(self, message: tuple) -> bool:
        """Apply one piece of news from the learner process; True when it is the last."""
        kind = message[0]
        if kind == "done":
            _, op_id, result, error = message
            op = self._in_flight.pop(op_id)
            self._ops_done += 1
            self._window.release()
            if error is not None:
                op.scope.fail()
                op.future.set_exception(error)
            else:
                op.future.set_result(result)
        elif kind == "dropped":
            self._in_flight.pop(message[1]).future.set_exception(dropped())
            self._window.release()
        elif kind == "status":
            self._board.post(message[1], message[2])
        elif kind == "metrics":
            for name, method, value in message[1]:
                getattr(getattr(self.metrics, name), method)(value)
        elif kind == "schema":
            self.schemas.establish(message[1])
        elif kind == "model":
            self._shared_model, self._device = message[1], torch.device(message[2])
            self._refresh_snapshot()
        elif kind == "snapshot":
            self._refresh_snapshot()
        elif kind == "ready":
            self._ready.set()
        elif kind == "failed":
            self._exited = message[1]
            return True
        elif kind == "durability":
            if self.on_durability is not None:
                self.on_durability(message[1], message[2])
        elif kind == "stopped":
            self._final = message[1]
            return True
        return False

    def _refresh_snapshot(self) -> None:
        with self._weights_lock:
            version = self._weights_version.value
            if version != self.snapshots.version:
                self.snapshots.publish_model(self._shared_model, version, self._device)

    def _gone(self) -> Unavailable:
        return Unavailable(f"{self._exited}; training is off until the server restarts")

    def _fail_queued(self, error: ServiceError) -> None:
        while True:
            try:
                op = self.queue.get_nowait()
            except queue.Empty:
                return
            if op is not STOP:
                op.future.set_exception(error)


# -- the learner process ----------------------------------------------------------------------------

class _RecordedMetrics:
    """Stands in for ServerMetrics: keeps what the worker counts and times, for the server process."""

    def __init__(self):
        self.records: list[tuple[str, str, float]] = []

    def __getattr__(self, name: str):
        records = self.records
        return SimpleNamespace(inc=lambda amount=1: records.append((name, "inc", amount)),
                               observe=lambda value: records.append((name, "observe", value)))

    def take(self) -> list:
        taken, self.records[:] = list(self.records), []
        return taken


class _RelayedSchemas(SchemaHolder):
    """The learner process's schema holder: an established schema is told to the server process."""

    def __init__(self, schema: Schema | None, send):
        super().__init__(schema)
        self._send = send

    def establish(self, schema: Schema) -> bool:
        new = super().establish(schema)
        if new:
            self._send(("schema", schema))
        return new


class _SharedWeights:
    """Stands in for the SnapshotHolder: one snapshot on the CPU whose tensors live in shared memory,
    refreshed in place under the lock; the server process makes its own snapshots from it."""

    def __init__(self, send, lock, version):
        self._send, self._lock, self._version = send, lock, version
        self._shared: Snapshot | None = None

    def current(self) -> Snapshot | None:
        return self._shared

    def publish_model(self, model: nn.Module, version: int, device: torch.device) -> None:
        with self._lock:
            refreshed = self._shared is not None and self._shared.refresh(model, version)
            if refreshed:
                self._version.value = version
        if refreshed:
            self._send(("snapshot",))
            return
        shared = Snapshot.of(model, version, torch.device("cpu"))  # another model: it crosses once more
        shared.model.share_memory()
        with self._lock:
            self._shared, self._version.value = shared, version
        self._send(("model", shared.model, str(device)))


class _PipeQueue:
    """What the worker asks of its queue in the learner process: is more work waiting?"""

    def __init__(self, conn):
        self._conn = conn

    def empty(self) -> bool:
        return not self._conn.poll(0)


def learner_main(conn, options: ProcessOptions, restore, lock, version, status_wanted) -> None:
    logging.basicConfig(level=options.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s [learner]: %(message)s")
    os.nice(options.nice)
    news: list[tuple] = []  # for the server process, sent as one message per operation
    metrics = _RecordedMetrics()
    w = options.worker
    checkpoints = CheckpointStore(w.checkpoint_dir, w.checkpoint_keep) if w.checkpoint_dir is not None else None
    worker = TrainingWorker(w, _RelayedSchemas(options.schema, news.append),
                            _SharedWeights(news.append, lock, version), metrics, checkpoints, status_wanted,
                            on_durability=lambda ok, why: news.append(("durability", ok, why)))
    worker.queue = _PipeQueue(conn)
    sent_status = [None]

    def send(*last: tuple) -> None:
        """The news so far, the worker's status if it built a new one, what it counted, then `last`."""
        status, ops = worker.published_status
        if status is not sent_status[0]:
            sent_status[0] = status
            news.append(("status", status, ops))
        if metrics.records:
            news.append(("metrics", metrics.take()))
        if news or last:
            conn.send([*news, *last])
            news.clear()

    try:
        if restore is not None:
            worker.restore(*restore)
        worker.begin()
    except Exception as e:
        log.exception("the learner could not start")
        conn.send([("failed", f"the learner process could not start: {e}")])
        return
    send(("ready",))
    failed_scopes: dict[int, None] = {}  # scopes with a failed operation, newest last (a few hundred kept)
    while True:
        if not conn.poll(0):
            worker.settle()
            send()
        try:
            message = conn.recv()
        except EOFError:  # the server process is gone
            return
        if message[0] == "stop":
            break
        _, op_id, scope_key, kind, wire = message
        if scope_key in failed_scopes:
            send(("dropped", op_id))
            continue
        op = OPS[kind](scope=_LocalScope(), **{k: _unpack(v) for k, v in wire.items()})
        result, error = worker.process(op)
        if error is not None:
            failed_scopes[scope_key] = None
            if len(failed_scopes) > 512:
                del failed_scopes[next(iter(failed_scopes))]
            if not isinstance(error, ServiceError):  # a bug, logged above; the caller learns nothing internal
                error = RuntimeError(f"{type(error).__name__} in the learner process")
        send(("done", op_id, result, error))
    final = worker.finish()
    send(("stopped", final))


class _LocalScope:
    live = True

    def fail(self) -> None:
        pass
