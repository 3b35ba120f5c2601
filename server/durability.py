"""What of the training worker's state is durable: when a checkpoint is due, what the last one holds,
and how a failing checkpoint volume is retried and reported.

"Done" means durable: the worker answers EndBucket (and Rollback) only once a checkpoint holds it.
A periodic checkpoint that fails is logged once per streak of failures and retried with back-off (1 s
doubling to a minute), never after every batch; `on_change(ok, why)` is told each time the state
becomes durable again or stops being so (the service's training health).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from cl_engine import LearnerConfig

from .checkpoint import CheckpointStore
from .metrics import ServerMetrics
from .schema import Schema, SchemaHolder

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = 1
CHECKPOINT_KEYS = frozenset({"format", "schema", "learner", "applied_sequences", "drift", "last_loss",
                             "last_drift_version", "written_at"})
CHECKPOINT_OPTIONAL_KEYS = frozenset({"promotion", "served_versions"})  # absent from checkpoints before issue 19
CHECKPOINT_RETRY_SECONDS = (1.0, 60.0)  # back-off between periodic checkpoint attempts after a failure


def check_checkpoint(state: dict, config: LearnerConfig, schemas: SchemaHolder, path: Path | None) -> None:
    """Refuse a checkpoint this server cannot continue from (ValueError naming why); establish its schema."""
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"checkpoint {path}: format {found!r}; this server reads {CHECKPOINT_FORMAT}")
    missing = sorted(CHECKPOINT_KEYS - state.keys())
    unknown = sorted(state.keys() - CHECKPOINT_KEYS - CHECKPOINT_OPTIONAL_KEYS)
    if missing or unknown:
        raise ValueError(f"checkpoint {path} verifies but is incomplete or foreign: "
                         f"missing {missing or 'nothing'}, unknown {unknown or 'nothing'}; move it aside "
                         "(the next older checkpoint is then used) or start with another checkpoint directory")
    if state["schema"] is not None:
        schema = Schema.from_dict(state["schema"])
        fixed = schemas.schema
        if fixed is not None and not fixed.matches(schema):
            raise ValueError(f"checkpoint {path} does not fit the settings' schema: the checkpoint's model has "
                             f"{schema.describe()}, the settings (class_names, input_shape) declare "
                             f"{fixed.describe()}")
        schemas.establish(schema)
    if state["learner"] is not None:
        saved = LearnerConfig(**state["learner"]["config"])
        ours, theirs = config.model_dump(exclude={"device"}), saved.model_dump(exclude={"device"})
        if ours != theirs:
            diff = {k: (theirs[k], ours[k]) for k in ours if ours[k] != theirs[k]}
            raise ValueError(f"checkpoint {path} was trained with other learner settings "
                             f"(setting: checkpoint → now): {diff}; start with the same settings, or with "
                             "an empty checkpoint directory")


class Durability:
    """The worker's checkpoints: `changed()` after every change of state, `due()` after each batch,
    `save(state)` to write one now. Without a store (no checkpoint directory) nothing is ever durable
    and nothing is written."""

    def __init__(self, store: CheckpointStore | None, metrics: ServerMetrics, every_batches: int = 0,
                 every_seconds: float = 0.0, on_change: Callable[[bool, str], None] | None = None):
        self.store = store
        self.metrics = metrics
        self.every_batches = every_batches
        self.every_seconds = every_seconds
        self.on_change = on_change
        self.last_path = ""
        self.last_time = 0.0  # Unix time the last checkpoint was written
        self.batches_since = 0  # batches applied since the last checkpoint
        self.dirty = False  # changed since the last checkpoint
        self.sequences: dict[str, int] = {}  # each stream's mark in the last checkpoint
        self.open_bucket = 0  # the open bucket in the last checkpoint: buckets before it ended durably
        self.error = ""  # why the last attempt failed; "" when it succeeded
        self._failures = 0  # failed attempts in the current streak
        self._retry_at = 0.0  # monotonic time before which no periodic attempt is made

    @property
    def enabled(self) -> bool:
        return self.store is not None

    def restored(self, path: Path | None, state: dict, open_bucket: int) -> None:
        """The state came from the checkpoint `state` at `path`: all of it is durable."""
        self.sequences = dict(state["applied_sequences"])
        self.open_bucket = open_bucket
        self.last_path = str(path or "")
        self.last_time = state["written_at"]

    def changed(self, batch: bool = False) -> None:
        self.dirty = True
        if batch:
            self.batches_since += 1

    def due(self) -> bool:
        """A periodic checkpoint is due (every N batches or T seconds), and no failure's back-off holds it."""
        return (self.store is not None and self.dirty and time.monotonic() >= self._retry_at
                and ((self.every_batches and self.batches_since >= self.every_batches)
                     or (self.every_seconds and time.time() - self.last_time >= self.every_seconds)))

    def save(self, state: dict, open_bucket: int) -> Path | None:
        """Write `state` (the worker's checkpoint_state, its open bucket `open_bucket`) now: its path, or
        None when it failed (then `error` says why; the first failure of a streak is logged, the next
        periodic attempt waits out a back-off)."""
        t0 = time.perf_counter()
        try:
            path = self.store.save(state)
        except Exception as e:
            self._failed(e)
            return None
        self.metrics.checkpoint_seconds.observe(time.perf_counter() - t0)
        self.metrics.checkpoints.inc()
        if self.error:
            log.warning("checkpoint %s written after %d failed attempts; the state is durable again", path,
                        self._failures)
            if self.on_change is not None:
                self.on_change(True, "")
        self.error, self._failures, self._retry_at = "", 0, 0.0
        self.last_path, self.last_time = str(path), state["written_at"]
        self.sequences, self.open_bucket = state["applied_sequences"], open_bucket
        self.batches_since, self.dirty = 0, False
        return path

    def _failed(self, e: Exception) -> None:
        self.metrics.checkpoint_failures.inc()
        self._failures += 1
        first, most = CHECKPOINT_RETRY_SECONDS
        self._retry_at = time.monotonic() + min(most, first * 2 ** (self._failures - 1))
        was_ok = not self.error
        self.error = (f"{e.strerror} ({e.filename or self.store.directory})"
                      if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}: {e}")
        if was_ok:
            log.error("checkpoint write failed in %s: %s; training goes on in memory only (the last durable "
                      "checkpoint is %s), retrying with back-off; further failures of this streak are not "
                      "logged", self.store.directory, self.error, self.last_path or "none",
                      exc_info=not isinstance(e, OSError))  # a disk fault needs no traceback; a bug does
            if self.on_change is not None:
                self.on_change(False, self.error)

    def final_state(self) -> dict:
        """Whether the state is durable, and if not why and how many applied batches a restart loses."""
        durable = self.store is None or not self.dirty
        return {"durable": durable, "checkpoints": self.store is not None,
                "batches_lost": 0 if durable else self.batches_since,
                "error": "" if durable else self.error, "last_checkpoint": self.last_path}

    def status(self) -> dict:
        """The durability fields of GetStatus."""
        return {"last_checkpoint": self.last_path, "last_checkpoint_time": self.last_time,
                "checkpoints": self.store is not None, "batches_since_checkpoint": self.batches_since,
                "checkpoint_error": self.error, "durable_sequences": dict(self.sequences)}
