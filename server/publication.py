"""What reaches serving, and when: the training worker's side of server/snapshot.py.

After an operation the worker publishes a serving snapshot of the version that serves: the learner's
own model, or under guarded promotion the last version that passed its check (server/promotion.py).
During a run of batches it is throttled by `snapshot_interval_seconds`; it is always published when
the queue runs empty and after any operation that is not a batch. A model with a non-finite weight or
statistic never reaches serving: each learner (built, restored from a checkpoint, rolled back) is
checked once, and after that the step guard vouches for it, as it applies only steps that leave every
weight and statistic finite (cl_engine/guard.py).
"""
from __future__ import annotations

import logging
import time

from cl_engine import Learner
from cl_engine.guard import all_finite

from .metrics import ServerMetrics
from .promotion import Promotion
from .snapshot import SnapshotHolder

log = logging.getLogger(__name__)


class ServingPublication:
    def __init__(self, snapshots: SnapshotHolder, metrics: ServerMetrics, promotion: Promotion, interval: float):
        self.snapshots = snapshots
        self.metrics = metrics
        self.promotion = promotion
        self.interval = interval
        self._last = 0.0  # when the last snapshot was published (monotonic)
        self._unservable_version = -1  # the last version refused publication as non-finite (logged once)
        self._finite_learner: Learner | None = None  # the learner whose weights were checked finite

    def due(self, batch: bool, idle: bool) -> bool:
        """Whether a snapshot is published after an operation: always but during a run of batches, where
        at most one per interval."""
        return not batch or idle or time.monotonic() - self._last >= self.interval

    def publish(self, learner: Learner | None, snapshot: bool) -> None:
        """Publish the serving version if `snapshot` and it is new and servable. Guarded promotion takes
        its baseline from the first learner it sees, snapshot or not."""
        if learner is None:
            return
        model, version = self.promotion.serving(learner)
        current = self.snapshots.current()
        if (snapshot and (current is None or current.version != version)
                and (model is not learner.model or self.servable(learner))):  # a promoted model passed its check
            self.snapshots.publish_model(model, version, learner.device)
            self.metrics.snapshots.inc()
            self._last = time.monotonic()

    def servable(self, learner: Learner) -> bool:
        """Whether the learner's model may serve: every weight and statistic finite (checked once a learner)."""
        if learner is self._finite_learner:
            return True
        if all_finite(learner.model.state_dict().values()):
            self._finite_learner = learner
            return True
        if self._unservable_version != learner.version:
            self._unservable_version = learner.version
            log.error("model version %d holds non-finite weights: not published; serving stays on version %d",
                      learner.version, self.snapshots.version)
        return False
