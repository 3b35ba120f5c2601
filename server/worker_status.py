"""The training worker's status: one consistent dict for GetStatus and the metrics, built on the worker
thread between operations and never mutated after it is posted (StatusBoard); the learner's part of
it, with what derives from the accuracy matrix recomputed only when the matrix changed (LearnerStatus)."""
from __future__ import annotations

import math
import threading
from typing import Callable

from cl_engine import Learner
from cl_engine.guard import REASONS as SKIP_REASONS
from cl_engine.metrics import METRIC_KEYS, forgetting_per_bucket

STATUS_WAIT_SECONDS = 5.0  # how long a reader waits for the worker to build a current status


class StatusBoard:
    """The last status posted and how many operations it covers. While batches keep coming the worker
    builds one only when a reader sets `wanted` (building it after every batch cost about a tenth of a
    small model's step); the reader then waits for the worker's next operation boundary."""

    def __init__(self, wanted=None):
        self.status: dict = {}
        self.ops = 0  # operations finished when `status` was built
        self.wanted = wanted if wanted is not None else threading.Event()  # may be a multiprocessing Event
        self._posted = threading.Condition()

    def post(self, status: dict, ops: int) -> None:
        with self._posted:
            self.status, self.ops = status, ops
            self._posted.notify_all()

    def wake(self) -> None:
        """Readers re-check `alive` (the worker is gone)."""
        with self._posted:
            self._posted.notify_all()

    def current(self, ops: int, alive: Callable[[], bool]) -> dict:
        """A status covering at least `ops` operations, waiting at most STATUS_WAIT_SECONDS for the
        worker to build one while `alive()` (then the last one posted)."""
        if self.ops >= ops or not alive():
            return self.status
        with self._posted:
            self.wanted.set()
            self._posted.wait_for(lambda: self.ops >= ops or not alive(), STATUS_WAIT_SECONDS)
        return self.status


class LearnerStatus:
    """The learner's part of the status."""

    def __init__(self):
        self._matrix_cache: tuple | None = None  # (learner, its matrix version, derived status)

    def of(self, learner: Learner | None) -> dict:
        if learner is None:
            return {"version": 0, "open_bucket": 0, "samples_trained": 0, "batches_trained": 0, "projections": 0,
                    "qp_fallbacks": 0, "skipped_steps": dict.fromkeys(SKIP_REASONS, 0),
                    "prequential_accuracy": math.nan, "prequential_accuracy_overall": math.nan, "matrix": [],
                    "initial": [], "metrics": {k: math.nan for k in METRIC_KEYS}, "forgetting_per_bucket": [],
                    "buffer": {"size": 0, "capacity": 0, "bytes": 0, "bytes_per_sample": 0, "by_bucket": {},
                               "by_class": {}},
                    "eval_buckets": []}
        s = learner.status()
        return {
            "version": learner.version,
            "open_bucket": learner.open_bucket,
            **{k: learner.counters[k] for k in ("samples_trained", "batches_trained", "projections", "qp_fallbacks")},
            "skipped_steps": {r: learner.counters.get(f"skipped_{r}", 0) for r in SKIP_REASONS},
            "prequential_accuracy": s["prequential_accuracy"],
            "prequential_accuracy_overall": s["prequential_accuracy_overall"],
            **self._matrix(learner),
            "buffer": {**s["buffer"], "bytes_per_sample": learner.buffer.bytes_per_sample()},
            "eval_buckets": sorted(learner.eval_sets),
        }

    def _matrix(self, learner: Learner) -> dict:
        """The accuracy matrix and what derives from it, recomputed only when the matrix changed
        (at bucket ends), not after every batch."""
        cached = self._matrix_cache
        if cached is None or cached[0] is not learner or cached[1] != learner.matrix.version:
            R = learner.matrix.matrix()
            cached = (learner, learner.matrix.version, {
                "matrix": R.tolist(), "initial": learner.matrix.initial_row().tolist(),
                "metrics": learner.metrics(), "forgetting_per_bucket": forgetting_per_bucket(R)})
            self._matrix_cache = cached
        return cached[2]
