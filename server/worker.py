"""The training worker: the only thread that touches the Learner.

Operations (train a batch, end a bucket, register a held-out set) wait in one bounded FIFO queue
and are applied strictly in order. A sender that finds the queue full waits (back-pressure: a
gRPC stream then stops reading, and flow control slows the client) and, past its timeout, gets
RESOURCE_EXHAUSTED. Every operation is checked against the learner's state at the moment it is
applied (bucket order, duplicates) and either applied whole or rejected whole.

Operations of one call share a CallScope: once one of them fails, or the call ends, the rest are
dropped unapplied, so a rejected batch is never followed by later batches of the same call.

After each operation the worker publishes a serving snapshot (server/publication.py: throttled by
`snapshot_interval_seconds` but always when the queue runs empty or a bucket ends). The status (one
consistent dict for GetStatus and the metrics) is built between operations too, but while batches
keep coming only when someone asks for it (`status()` waits for the next operation boundary):
building it after every batch cost about a tenth of a small model's step. Checkpoints are written
at bucket ends, every N batches, every T seconds and at shutdown; they hold each stream's applied
sequence together with the model, so both always agree.

"Done" means durable: EndBucket answers only once a checkpoint holds the bucket's end (NotDurable
otherwise); server/durability.py keeps what the last checkpoint holds and retries a failing volume.
The operations and their results are in server/operations.py.
"""
from __future__ import annotations

import logging
import math
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cl_engine import Learner, LearnerConfig
from cl_engine.drift import PageHinkley

from . import eval_sets
from .checkpoint import CheckpointStore
from .codec import EncodedBatch
from .durability import CHECKPOINT_FORMAT, Durability, check_checkpoint
from .eval_sets import EvalSetBudget
from .errors import FailedPrecondition, InvalidArgument, NotDurable, ServiceError, Unavailable
from .metrics import ServerMetrics
from .operations import (STOP, EndBucketOp, EndBucketResult, ForgetStreamOp, ForgetStreamResult, Op, RegisterEvalOp,
                         RegisterResult, RollbackOp, TrainOp, TrainResult, dropped, enqueue)
from .promotion import Promotion, PromotionOptions
from .publication import ServingPublication
from .rollback import ServedVersions
from .schema import Schema, SchemaHolder
from .snapshot import SnapshotHolder
from .stream_marks import StreamMarks
from .worker_status import LearnerStatus, StatusBoard

log = logging.getLogger(__name__)


@dataclass
class WorkerOptions:
    """How the training worker runs, from the server's settings (picklable: a learner process builds
    its worker from them too)."""
    config: LearnerConfig
    queue_size: int = 64
    snapshot_interval: float = 0.0
    max_streams: int = 1024
    stream_mark_max_idle_seconds: float = 0.0
    checkpoint_dir: Path | None = None
    checkpoint_keep: int = 3
    checkpoint_every_batches: int = 0
    checkpoint_every_seconds: float = 0.0
    drift: PageHinkley = field(default_factory=PageHinkley)
    eval_budget: EvalSetBudget = field(default_factory=EvalSetBudget)
    promotion: PromotionOptions = field(default_factory=PromotionOptions)
    rollback_keep: int = 3
    decode_threads: int = 1  # threads that decode a Train batch's encoded images where it is applied (1: in order)


class TrainingWorker:
    """Applies the queued operations to the Learner, one at a time, on its own thread (or, in a learner
    process, on that process's main thread: server/learner_process.py)."""

    def __init__(self, options: WorkerOptions, schemas: SchemaHolder, snapshots: SnapshotHolder,
                 metrics: ServerMetrics, checkpoints: CheckpointStore | None = None,
                 status_wanted: threading.Event | None = None,
                 on_durability: Callable[[bool, str], None] | None = None):
        self.config = options.config
        self.decode_pool = (ThreadPoolExecutor(options.decode_threads, thread_name_prefix="clstream-train-decode")
                            if options.decode_threads > 1 else None)  # for Train images (codec.EncodedBatch.decode)
        self.marks = StreamMarks(options.max_streams, options.stream_mark_max_idle_seconds)
        self.eval_budget = options.eval_budget
        self.schemas = schemas
        self.metrics = metrics
        self.queue: queue.Queue = queue.Queue(maxsize=options.queue_size)
        self.queue_size = options.queue_size
        self.durability = Durability(checkpoints, metrics, options.checkpoint_every_batches,
                                     options.checkpoint_every_seconds, on_durability)
        self.drift = options.drift
        self.promotion = Promotion(options.promotion)  # which version serves (server/promotion.py)
        self.publication = ServingPublication(snapshots, metrics, self.promotion, options.snapshot_interval)
        self.versions = ServedVersions(options.rollback_keep)  # served versions kept for Rollback (server/rollback.py)
        # State that only the worker thread touches once it runs.
        self.learner: Learner | None = None
        self.applied: dict[str, int] = {}  # stream_id → applied high-water mark
        self.last_loss = math.nan
        self.last_drift_version = 0
        self.learner_status = LearnerStatus()
        self._accepting = True
        self._thread: threading.Thread | None = None
        self._ops_done = 0  # operations finished by the worker (applied or refused)
        self.board = StatusBoard(status_wanted)

    # -- life cycle (any thread, before start / after stop) -----------------------------------------

    def restore(self, state: dict, path: Path | None = None) -> None:
        """Continue from a checkpoint's state (before start)."""
        check_checkpoint(state, self.config, self.schemas, path)
        if state["learner"] is not None:
            try:
                self.learner = Learner.from_state_dict(state["learner"], device=self.config.device)
            except (KeyError, TypeError, ValueError, RuntimeError) as e:
                raise ValueError(f"checkpoint {path}: the learner's state does not load "
                                 f"({type(e).__name__}: {e}); move the file aside or start with another "
                                 "checkpoint directory") from None
        self.applied = dict(state["applied_sequences"])
        self.marks.restored(self.applied)
        self.durability.restored(path, state, 0 if self.learner is None else self.learner.open_bucket)
        configured = {k: getattr(self.drift, k) for k in ("delta", "threshold", "min_samples", "alpha")}
        self.drift.load_state_dict({**state["drift"], **configured})  # the running test, today's parameters
        self.last_loss = state["last_loss"]
        self.last_drift_version = state["last_drift_version"]
        self.promotion.load_state_dict(state.get("promotion"), self.learner)
        self.versions.load_state_dict(state.get("served_versions"))

    def start(self) -> None:
        self.begin()
        self._thread = threading.Thread(target=self._run, name="clstream-training-worker", daemon=True)
        self._thread.start()

    def begin(self) -> None:
        """Build the model if the schema is known, publish the first snapshot and status."""
        if self.learner is None and self.schemas.schema is not None:
            self._ensure_learner(self.schemas.schema)
        self._publish(snapshot=True)

    def finish(self) -> dict:
        """After the last operation: the final checkpoint and status. Returns whether the final state
        is durable, and if not why and how many applied batches a restart loses."""
        if self.durability.dirty and self.durability.enabled:
            self._checkpoint()
        self._publish(snapshot=False)
        if self.decode_pool is not None:
            self.decode_pool.shutdown(wait=False)
        return self.final_state()

    def final_state(self) -> dict:
        return self.durability.final_state()

    def stop(self, timeout: float | None = None) -> dict:
        """Stop taking operations, apply those already queued, write a final checkpoint; the final
        state's durability, as `finish`."""
        self._accepting = False
        if self._thread is None:
            return self.final_state()
        self.queue.put(STOP)  # after everything already queued
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("training worker did not finish within %.0fs; no final checkpoint", timeout or 0)
            return {**self.final_state(), "durable": False, "error": "the training worker did not finish"}
        while True:  # anything a sender slipped in after the stop marker is answered, not left hanging
            try:
                late = self.queue.get_nowait()
            except queue.Empty:
                break
            if late is not STOP:
                late.future.set_exception(Unavailable("the server is shutting down; send again after it restarts"))
        return self.finish()

    # -- submitting (gRPC threads) ------------------------------------------------------------------

    def submit(self, op: Op, timeout: float) -> Future:
        """Queue `op`, waiting up to `timeout` seconds for room while its call is alive."""
        return enqueue(self.queue, op, timeout, lambda: self._accepting)

    @property
    def queue_depth(self) -> int:
        return self.queue.qsize()

    @property
    def published_status(self) -> tuple[dict, int]:
        """The last status built and how many operations it covers (the worker thread's view)."""
        return self.board.status, self.board.ops

    def status(self) -> dict:
        """The status after the last operation the worker finished (a consistent view; never mutated
        after publication). While the worker is busy with a run of batches it builds one only on
        request: this waits for its next operation boundary, at most STATUS_WAIT_SECONDS (then the
        last one built is returned)."""
        thread = self._thread
        return self.board.current(self._ops_done, lambda: thread is not None and thread.is_alive()
                                  and thread is not threading.current_thread())  # else: none to wait for

    # -- the worker thread --------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            if self.queue.empty():
                self.settle()
            op = self.queue.get()
            if op is STOP:
                return
            if not op.scope.live:
                op.future.set_exception(dropped())
                continue
            result, error = self.process(op)
            if error is not None:
                op.scope.fail()
                op.future.set_exception(error)
            else:
                op.future.set_result(result)

    def settle(self) -> None:
        """With nothing waiting: publish what a run of operations left unpublished, the throttled
        snapshot and the status built only on request (the run may have ended in dropped operations,
        which publish nothing)."""
        self._publish(snapshot=True, status=self.board.ops < self._ops_done)

    def process(self, op: Op) -> tuple[object, Exception | None]:
        """Apply `op` whole or not at all, then publish: (result, None) or (None, the error)."""
        result, error = None, None
        try:
            result = self._apply(op)
        except ServiceError as e:
            error = e
        except Exception as e:  # a bug: keep serving, tell the caller nothing internal
            log.exception("training worker failed on %s", type(op).__name__)
            error = e
        try:
            self._after(op)  # before the caller hears back: its next GetStatus sees this op
        except Exception:  # a bug in publishing or checkpointing must not stop training
            log.exception("training worker: publishing after %s failed", type(op).__name__)
        return result, error

    def _apply(self, op: Op):
        if isinstance(op, TrainOp):
            return self._train(op)
        if isinstance(op, EndBucketOp):
            return self._end_bucket(op)
        if isinstance(op, RegisterEvalOp):
            return self._register(op)
        if isinstance(op, ForgetStreamOp):
            return self._forget(op)
        if isinstance(op, RollbackOp):
            return self._rollback(op)
        raise TypeError(f"unknown operation {op!r}")

    def _after(self, op: Op) -> None:
        idle = self.queue.empty()
        train = isinstance(op, TrainOp)
        snapshot = self.publication.due(train, idle)
        if train and self.learner is not None and self.promotion.trained(self.learner):
            self.versions.record(self.learner)  # before a checkpoint, which then holds the decision
        if train and self.durability.due():
            self._checkpoint()
        self._ops_done += 1
        self._publish(snapshot, status=not train or idle or self.board.wanted.is_set())

    def _ensure_learner(self, schema: Schema) -> Learner:
        return self._adopt(self._candidate(schema), schema)

    def _candidate(self, schema: Schema) -> Learner:
        """The learner an operation is checked and applied against: the server's, or on first contact a
        new one that becomes the server's (with its schema) only by `_adopt`, once the operation has
        passed every check and been applied whole; a rejected first operation leaves nothing behind."""
        self.schemas.check(schema)  # FAILED_PRECONDITION when another call's schema was established first
        if self.learner is not None:
            return self.learner
        return Learner(self.config, schema.input_shape, schema.num_classes)

    def _adopt(self, learner: Learner, schema: Schema) -> Learner:
        if self.learner is None:
            self.schemas.establish(schema)
            self.learner = learner
            log.info("built a %s model for %s (%s, device %s)", self.config.model, schema.describe(),
                     self.config.strategy, learner.device)
            self.durability.changed()
        return learner

    def _train(self, op: TrainOp) -> TrainResult:
        mark = self.applied.get(op.stream_id, 0)
        if op.sequence <= mark and self.learner is not None:
            self.schemas.check(op.schema)
            self.marks.used(op.stream_id)
            self.metrics.duplicate_batches.inc()
            return TrainResult(False, math.nan, math.nan, self.learner.version, self.learner.counters["samples_trained"],
                               mark, self.durability.sequences.get(op.stream_id, 0))
        learner = self._candidate(op.schema)
        try:
            learner.check_bucket(op.bucket)
        except ValueError as e:
            raise FailedPrecondition(f"bucket: {e}") from None
        if isinstance(op.x, EncodedBatch):  # here, off the gRPC threads; on a CUDA learner, on its device
            op.x = op.x.decode(train=True, pool=self.decode_pool, device=learner.device)
            op.schema.check_values(learner.view.evaluation(op.x), "samples")
        try:
            learner.check_batch(op.x, op.y)
        except ValueError as e:
            raise InvalidArgument("samples", str(e)) from None
        self.marks.admit(self.applied, op.stream_id)  # may drop idle marks: only for a batch about to be applied
        try:
            learner.plan_bucket(op.bucket, op.bucket_batches or None)
        except ValueError as e:
            raise InvalidArgument("bucket_batches", str(e)) from None
        t0 = time.perf_counter()
        step = learner.observe_checked(op.x, op.y, op.bucket, ids=op.ids)  # checked above: not twice
        self.metrics.train_step_seconds.observe(time.perf_counter() - t0)
        self._adopt(learner, op.schema)
        self.applied[op.stream_id] = op.sequence  # a skipped step's batch is consumed too: exactly-once holds
        self.marks.used(op.stream_id)
        self.durability.changed(batch=True)
        if not step.learned:
            return TrainResult(True, step.accuracy, step.loss, step.version, learner.counters["samples_trained"],
                               op.sequence, self.durability.sequences.get(op.stream_id, 0), skip_reason=step.skipped)
        self.last_loss = step.loss
        if self.drift.update(1.0 - step.accuracy, step.total):
            self.last_drift_version = step.version
            log.info("drift detected at model version %d (bucket %d)", step.version, op.bucket)
        return TrainResult(True, step.accuracy, step.loss, step.version, learner.counters["samples_trained"],
                           op.sequence, self.durability.sequences.get(op.stream_id, 0))

    def _end_bucket(self, op: EndBucketOp) -> EndBucketResult:
        learner = self.learner
        if learner is None:
            raise FailedPrecondition("no model yet: train a batch (declaring the schema) before ending a bucket")
        already = op.bucket < learner.open_bucket
        if not already:
            try:
                learner.check_bucket(op.bucket)
            except ValueError as e:
                raise FailedPrecondition(f"bucket: {e}") from None
        for stream_id, expected in sorted(op.expected.items()):
            mark = self.applied.get(stream_id, 0)
            if mark < expected:
                raise FailedPrecondition(
                    f"expected_sequences[{stream_id!r}]: expected sequence {expected} applied before bucket "
                    f"{op.bucket} ends, the server's applied mark is {mark}; send from sequence {mark + 1} again "
                    f"(the bucket {'has ended' if already else 'stays open'})")
        t0 = time.perf_counter()
        if not already:
            learner.end_bucket(op.bucket, bucket_size=op.bucket_size)  # the weights do not change: no new snapshot
            if not self.promotion.enabled or self.promotion.check(learner):  # guarded: each bucket end is a check
                self.versions.record(learner)  # a version served at a bucket end, kept for Rollback
            self.durability.changed()
        if self.durability.enabled and op.bucket >= self.durability.open_bucket:
            if self._checkpoint() is None:
                raise NotDurable(f"the end of bucket {op.bucket}", f"the checkpoint failed: {self.durability.error}; "
                                 "free space on or repair the checkpoint volume, then call EndBucket for this bucket "
                                 "again (it retries the checkpoint)")
        if not already:
            self.metrics.end_bucket_seconds.observe(time.perf_counter() - t0)
        R = learner.matrix.matrix()
        return EndBucketResult(op.bucket, R[op.bucket].tolist(), learner.metrics(), learner.version,
                               learner.open_bucket, already, self.durability.last_path, self.durability.enabled)

    def _rollback(self, op: RollbackOp) -> tuple[int, int, str, bool]:
        """The learner and serving back to a kept version (server/rollback.py); durable when checkpoints are on."""
        if self.learner is None:
            raise FailedPrecondition("no model yet: nothing to roll back")
        self.learner = self.versions.restore(op.version, self.learner, self.config.device)
        self.promotion.reset(self.learner)
        self.durability.changed()
        log.warning("rolled back to model version %d (open bucket %d); the streams' marks stay: batches applied "
                    "after it are forgotten", op.version, self.learner.open_bucket)
        if self.durability.enabled and self._checkpoint() is None:
            raise NotDurable(f"the rollback to version {op.version}", f"the checkpoint failed: "
                             f"{self.durability.error}; it is applied in memory; fix the checkpoint volume")
        return self.learner.version, self.learner.open_bucket, self.durability.last_path, self.durability.enabled

    def _register(self, op: RegisterEvalOp) -> RegisterResult:
        learner = self._candidate(op.schema)
        existing = learner.eval_sets.get(op.bucket)
        if existing is not None:
            if not eval_sets.same(existing, op.x, op.y):
                raise FailedPrecondition(f"bucket: bucket {op.bucket} already has a held-out set of {len(existing)} "
                                         "samples and it differs from this one; held-out sets are fixed once "
                                         "registered, so the accuracy matrix keeps its meaning")
            return RegisterResult(op.bucket, len(existing), True, sorted(learner.eval_sets))
        self.eval_budget.check(learner.eval_sets, op.bucket, op.x, op.y)
        learner.register_eval_set(op.bucket, eval_sets.held(op.x, op.y))
        self._adopt(learner, op.schema)
        self.durability.changed()
        return RegisterResult(op.bucket, len(op.y), False, sorted(learner.eval_sets))

    def _forget(self, op: ForgetStreamOp) -> ForgetStreamResult:
        sequence = self.marks.forget(self.applied, op.stream_id)
        if sequence is not None:
            self.durability.changed()
            log.info("dropped the applied mark of stream %r (at %d), as ForgetStream asked", op.stream_id, sequence)
        return ForgetStreamResult(op.stream_id, sequence, len(self.applied))

    def _checkpoint(self) -> Path | None:
        """Write a checkpoint now: its path, or None when it failed (server/durability.py)."""
        return self.durability.save(self.checkpoint_state(), 0 if self.learner is None else self.learner.open_bucket)

    def checkpoint_state(self) -> dict:
        schema = self.schemas.schema
        return {
            "format": CHECKPOINT_FORMAT,
            "schema": None if schema is None else schema.to_dict(),
            "learner": None if self.learner is None else self.learner.state_dict(),
            "applied_sequences": dict(self.applied),
            "drift": self.drift.state_dict(),
            "last_loss": self.last_loss,
            "last_drift_version": self.last_drift_version,
            "promotion": self.promotion.state_dict(),
            "served_versions": self.versions.state_dict(),
            "written_at": time.time(),
        }

    def _publish(self, snapshot: bool, status: bool = True) -> None:
        self.publication.publish(self.learner, snapshot)
        if status:
            built = self._build_status()
            self.board.wanted.clear()  # before posting: a reader then waits for no more than this one
            self.board.post(built, self._ops_done)

    def _build_status(self) -> dict:
        return {
            "has_model": self.learner is not None,
            "schema": self.schemas.schema,
            "applied_sequences": dict(self.applied),
            "last_loss": self.last_loss,
            "drift": {"statistic": self.drift.statistic, "threshold": self.drift.threshold,
                      "events": self.drift.events, "last_event_version": self.last_drift_version},
            **self.durability.status(),
            "promotion": self.promotion.status(),
            "rollback_versions": self.versions.versions(),
            **self.learner_status.of(self.learner),
        }
