"""Guarded promotion (issue 19): with it on, a model version reaches the serving snapshot only after a
canary check. The canary set is every registered held-out set, pooled; the learner's accuracy on it
must not be lower than the serving version's by more than `tolerance`. The check runs every
`every_batches` training batches and at each bucket end. A version that fails keeps serving on the
last good one (the learner trains on; a later version may pass); it is counted and logged.

The first model the server has (built, or loaded) is served without a check: it is the baseline.
With no held-out set registered there is nothing to check against, so nothing new is promoted (the
check says so). The promoted weights are kept here (a copy of the model) and checkpointed, so a
restart serves the last good version, not the learner's newest one.
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from cl_engine.guard import all_finite
from cl_engine.learner import Learner
from cl_engine.precision import model_autocast

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromotionOptions:
    enabled: bool = False
    every_batches: int = 50
    tolerance: float = 0.02


@torch.no_grad()
def canary_accuracy(model: nn.Module, learner: Learner) -> float:
    """`model`'s accuracy on every held-out set registered with `learner`, pooled (NaN: none)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for samples in learner.eval_sets.values():
        for start in range(0, len(samples), learner.eval_batch):
            x, y = samples.batch(torch.arange(start, min(start + learner.eval_batch, len(samples))))
            x = learner.view.evaluation(x.to(learner.device))  # as the learner evaluates: uint8 scaled, normalised
            with model_autocast(model, learner.device):  # and in its precision
                logits = model(x)
            correct += int((logits.argmax(dim=1).cpu() == y).sum())
            total += len(y)
    model.train(was_training)
    return correct / total if total else math.nan


class Promotion:
    """The serving side of guarded promotion: which model and version serve, and the canary checks."""

    def __init__(self, options: PromotionOptions):
        self.options = options
        self.model: nn.Module | None = None  # the promoted weights (a copy), while enabled
        self.version = 0
        self.promotions = 0
        self.rejections = 0
        self.batches_since_check = 0
        self.canary_accuracy = math.nan  # the learner's, at the last check
        self.serving_accuracy = math.nan  # the serving version's, at the last check
        self.last_reason = ""
        self._served_cache: tuple[int, tuple, float] | None = None  # (version, eval sets, accuracy)

    @property
    def enabled(self) -> bool:
        return self.options.enabled

    def serving(self, learner: Learner) -> tuple[nn.Module, int]:
        """The model and version to publish."""
        if not self.enabled:
            return learner.model, learner.version
        if self.model is None:  # the baseline: the first model this server has
            self._take(learner)
        return self.model, self.version

    def trained(self, learner: Learner) -> bool | None:
        """After a training batch: check when `every_batches` have passed since the last check (as `check`)."""
        if not self.enabled:
            return None
        self.batches_since_check += 1
        if self.batches_since_check >= self.options.every_batches:
            return self.check(learner)
        return None

    def check(self, learner: Learner) -> bool | None:
        """The canary check of the learner's version: True promoted, False rejected, None nothing new."""
        if not self.enabled or self.model is None or learner.version == self.version:
            return None
        self.batches_since_check = 0
        if not learner.eval_sets:
            return self._reject(learner, "no held-out set is registered: nothing to check the version against")
        self.canary_accuracy = canary_accuracy(learner.model, learner)
        self.serving_accuracy = self._served_accuracy(learner)
        if not all_finite(learner.model.state_dict().values()):
            return self._reject(learner, "non-finite weights")
        if self.canary_accuracy < self.serving_accuracy - self.options.tolerance:
            return self._reject(learner, f"canary accuracy {self.canary_accuracy:.4f} is below the serving "
                                         f"version's {self.serving_accuracy:.4f} by more than "
                                         f"{self.options.tolerance:g}")
        self._take(learner)
        self._served_cache = (self.version, tuple(sorted(learner.eval_sets)), self.canary_accuracy)
        self.promotions += 1
        self.last_reason = ""
        log.info("model version %d promoted to serving (canary accuracy %.4f, serving had %.4f)", self.version,
                 self.canary_accuracy, self.serving_accuracy)
        return True

    def reset(self, learner: Learner) -> None:
        """After a rollback: `learner`'s version serves at once, the new baseline."""
        if self.enabled:
            self._take(learner)
            self._served_cache = None
            self.batches_since_check = 0

    def _served_accuracy(self, learner: Learner) -> float:
        key = (self.version, tuple(sorted(learner.eval_sets)))
        if self._served_cache is None or self._served_cache[:2] != key:
            self._served_cache = (*key, canary_accuracy(self.model, learner))
        return self._served_cache[2]

    def _take(self, learner: Learner) -> None:
        if self.model is None:
            self.model = copy.deepcopy(learner.model)
        else:
            self.model.load_state_dict(learner.model.state_dict())
        self.version = learner.version

    def _reject(self, learner: Learner, reason: str) -> bool:
        self.rejections += 1
        if reason != self.last_reason:
            log.warning("model version %d not promoted: %s; serving stays on version %d (further rejections "
                        "for the same reason are counted, not logged)", learner.version, reason, self.version)
        self.last_reason = reason
        return False

    def status(self) -> dict:
        return {"enabled": self.enabled, "promotions": self.promotions, "rejections": self.rejections,
                "canary_accuracy": self.canary_accuracy, "serving_canary_accuracy": self.serving_accuracy,
                "last_rejection": self.last_reason}

    def state_dict(self) -> dict | None:
        if not self.enabled or self.model is None:
            return None
        return {"model": {k: v.cpu() for k, v in self.model.state_dict().items()}, "version": self.version,
                "promotions": self.promotions, "rejections": self.rejections}

    def load_state_dict(self, state: dict | None, learner: Learner | None) -> None:
        """Restore the promoted version (None, or without the option: serve the learner's, as a baseline)."""
        if not self.enabled or state is None or learner is None:
            return
        self.model = copy.deepcopy(learner.model)
        self.model.load_state_dict(state["model"])
        self.version = state["version"]
        self.promotions, self.rejections = state["promotions"], state["rejections"]
