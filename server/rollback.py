"""Rollback (issue 19): the last `keep` model versions that were served, each as the learner's whole
state (model, optimizer, memory, matrix, counters, RNG), so that a Rollback puts the learner and
serving back to one of them bit for bit.

A version is kept when it starts serving at a checkpointable point: each promotion under guarded
promotion, otherwise each bucket end (every batch is served then, and a bucket end is the version a
person names). The kept states travel in every checkpoint, so a rollback survives a restart. Cost:
`keep` copies of the learner's state in memory and in each checkpoint.

What a rollback does to the streams: their applied marks stay where they are. Batches applied after
the version are consumed and forgotten: the model no longer holds what they taught, and sending
them again is acknowledged as a duplicate, not trained (exactly-once: no batch is ever applied
twice). The open bucket and the accuracy matrix are the version's: buckets ended after it are open
again, to be trained with new batches and ended once more.
"""
from __future__ import annotations

import copy

from cl_engine.learner import Learner

from .errors import FailedPrecondition


class ServedVersions:
    def __init__(self, keep: int):
        self.keep = keep
        self.states: dict[int, dict] = {}  # model version → the learner's state then, oldest first

    def record(self, learner: Learner) -> None:
        if not self.keep:
            return
        self.states.pop(learner.version, None)
        self.states[learner.version] = copy.deepcopy(learner.state_dict())  # state_dict shares CPU tensors
        while len(self.states) > self.keep:
            del self.states[next(iter(self.states))]

    def restore(self, version: int, current: Learner, device: str) -> Learner:
        """A learner exactly as it was at `version`, keeping the held-out sets registered since."""
        if version not in self.states:
            kept = ", ".join(map(str, self.states)) or "none (rollback_keep is 0, or no version was kept yet)"
            raise FailedPrecondition(f"to_version: version {version} is not kept for rollback; kept: {kept}")
        learner = Learner.from_state_dict(copy.deepcopy(self.states[version]), device=device)
        for bucket, samples in current.eval_sets.items():
            learner.eval_sets.setdefault(bucket, samples)
        return learner

    def versions(self) -> list[int]:
        return list(self.states)

    def state_dict(self) -> dict:
        return {"states": dict(self.states)}

    def load_state_dict(self, state: dict | None) -> None:
        if state is None or not self.keep:
            return
        self.states = dict(list(state["states"].items())[-self.keep:])
