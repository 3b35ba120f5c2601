"""One Learner owns a model, its optimizer, a strategy, the replay memory and the metrics.

It knows nothing of gRPC. Buckets are trained in order 0, 1, 2, …: `observe` batches of the open
bucket (test-then-train: each batch is scored by the model before it learns from it), then
`end_bucket` consolidates the memory and adds a row to the accuracy matrix, measured on every
registered held-out set.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from .buffer import ReplayBuffer
from .config import LearnerConfig
from .metrics import AccuracyMatrix, PrequentialWindow
from .models import build_model
from .retention import BucketRetention, ReservoirRetention
from .streams.base import SampleSet, TensorSet
from .strategies import STRATEGIES, Context

EVAL_BATCH = 512


@dataclass
class StepResult:
    correct: int
    total: int
    loss: float
    version: int
    skipped: str | None = None  # why the batch was consumed but not learned (guard.REASONS); None: learned

    @property
    def learned(self) -> bool:
        return self.skipped is None

    @property
    def accuracy(self) -> float:
        return self.correct / self.total


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here; expected --device cpu or auto")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} asked for, but this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s): expected cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return device


class Learner:
    def __init__(self, config: LearnerConfig, input_shape: tuple[int, ...], num_classes: int):
        self.config = config
        self.input_shape = tuple(int(d) for d in input_shape)
        self.num_classes = int(num_classes)
        self.device = resolve_device(config.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.model: nn.Module = build_model(config.model, self.input_shape, self.num_classes).to(self.device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay)
        self.generator = torch.Generator().manual_seed(config.seed)
        strategy_cls = STRATEGIES[config.strategy]
        capacity = config.buffer_capacity if strategy_cls.uses_memory else 0
        self.buffer = ReplayBuffer(capacity, self.device)
        if config.retention in ("reservoir", "reservoir-end"):
            self.retention = ReservoirRetention(self.buffer, config.class_balanced,
                                                deferred=config.retention == "reservoir-end")
        else:
            self.retention = BucketRetention(
                self.buffer, config.candidate_pool,
                ratio=config.retain_ratio if config.retention == "ratio" else None,
                per_bucket=config.memory_per_bucket if config.retention == "per-bucket" else None)
        self.counters = {"samples_trained": 0, "batches_trained": 0, "projections": 0, "qp_fallbacks": 0}
        self.strategy = strategy_cls(Context(self.model, self.optimizer, self.buffer, self.generator, config,
                                             self.counters))
        self.matrix = AccuracyMatrix()
        self.prequential = PrequentialWindow(config.prequential_window)
        self.eval_sets: dict[int, SampleSet] = {}
        self.seconds = {"consolidate": 0.0, "evaluate": 0.0}  # time spent in end_bucket, by part
        self.version = 0  # one per applied update
        self.open_bucket = 0  # the bucket being trained; buckets before it are finished

    # -- training -------------------------------------------------------------------------------

    def check_batch(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Raise ValueError naming what is wrong with a batch, before anything is applied."""
        if x.ndim < 1 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"samples have shape {tuple(x.shape)}; expected (n, {', '.join(map(str, self.input_shape))})")
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"labels have shape {tuple(y.shape)}; expected ({x.shape[0]},), one per sample")
        if x.shape[0] == 0:
            raise ValueError("empty batch; expected at least one sample")
        if not x.is_floating_point():
            raise ValueError(f"samples have dtype {x.dtype}; expected a float tensor")
        if not math.isfinite(float(x.sum())) and not bool(torch.isfinite(x).all()):  # a finite sum: all finite
            raise ValueError("samples contain NaN or Inf")
        if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"labels have dtype {y.dtype}; expected integers")
        low, high = (int(v) for v in torch.aminmax(y))
        if low < 0 or high >= self.num_classes:
            raise ValueError(f"labels span {low}..{high}; expected 0..{self.num_classes - 1}")

    def check_bucket(self, bucket: int) -> None:
        if bucket < self.open_bucket:
            raise ValueError(f"bucket {bucket} is already finished; the open bucket is {self.open_bucket}")
        if bucket > self.open_bucket:
            raise ValueError(f"bucket {bucket} is not the open bucket {self.open_bucket}; buckets are trained in "
                             f"order, so end bucket {self.open_bucket} first")

    def observe(self, x: torch.Tensor, y: torch.Tensor, bucket: int) -> StepResult:
        """Score the batch with the current model, then take one update step on it.

        A step the guard refuses (non-finite loss, gradient or resulting weights) changes nothing:
        no weights, no memory, no counters but its skip count; the result says why (`skipped`)."""
        self.check_bucket(bucket)
        self.check_batch(x, y)
        if self.version == 0 and not self.matrix.initial and self.eval_sets:
            self.matrix.set_initial(self.evaluate_all())
        x = x.to(self.device, torch.float32)
        y = y.to(self.device, torch.int64)
        saved = [b.clone() for b in self.model.buffers()]  # batch-norm statistics move in the forward pass
        out = self.strategy.observe(x, y, bucket)
        if out.skipped is not None:
            with torch.no_grad():
                for b, old in zip(self.model.buffers(), saved):
                    b.copy_(old)
            return StepResult(0, y.shape[0], out.loss, self.version, out.skipped)
        if self.strategy.uses_memory:
            self.retention.observe(x, y, bucket, self.generator)
        correct, n = int((out.logits.argmax(dim=1) == y).sum()), y.shape[0]
        self.prequential.add(correct, n)
        self.counters["samples_trained"] += n
        self.counters["batches_trained"] += 1
        self.version += 1
        return StepResult(correct, n, out.loss, self.version)

    def end_bucket(self, bucket: int, bucket_size: int | None = None) -> dict[int, float]:
        """Consolidate the memory, measure every held-out set, and open the next bucket.

        `bucket_size` is the number of distinct samples in the bucket, for ratio retention when
        a bucket is trained for several epochs. Returns the new row of the accuracy matrix.
        """
        self.check_bucket(bucket)
        t0 = time.perf_counter()
        if self.strategy.uses_memory:
            self.retention.end_bucket(bucket, self.logits, self.config.selection, self.generator, bucket_size)
        t1 = time.perf_counter()
        row = self.evaluate_all()
        self.matrix.add_row(bucket, row)
        self.open_bucket += 1
        self.seconds["consolidate"] += t1 - t0
        self.seconds["evaluate"] += time.perf_counter() - t1
        return row

    # -- inference ------------------------------------------------------------------------------

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        out = torch.cat([self.model(x[i: i + EVAL_BATCH].to(self.device, torch.float32))
                         for i in range(0, len(x), EVAL_BATCH)])
        self.model.train(was_training)
        return out

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities for x."""
        return torch.softmax(self.logits(x), dim=1)

    def evaluate(self, samples: SampleSet) -> float:
        """Accuracy of the current model on a labelled set."""
        if len(samples) == 0:
            return math.nan
        correct = 0
        for start in range(0, len(samples), EVAL_BATCH):
            x, y = samples.batch(torch.arange(start, min(start + EVAL_BATCH, len(samples))))
            correct += int((self.logits(x).argmax(dim=1).cpu() == y).sum())
        return correct / len(samples)

    def register_eval_set(self, bucket: int, samples: SampleSet) -> None:
        if bucket < 0:
            raise ValueError(f"eval set bucket must be >= 0, got {bucket}")
        self.eval_sets[bucket] = samples

    def evaluate_all(self) -> dict[int, float]:
        return {b: self.evaluate(s) for b, s in sorted(self.eval_sets.items())}

    # -- reporting ------------------------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        return self.matrix.summary()

    def status(self) -> dict:
        return {
            "version": self.version,
            "open_bucket": self.open_bucket,
            **self.counters,
            "prequential_accuracy": self.prequential.accuracy,
            "prequential_accuracy_overall": self.prequential.overall_accuracy,
            "buffer": {"size": len(self.buffer), "capacity": self.buffer.capacity,
                       "by_bucket": self.buffer.counts_by_bucket(), "by_class": self.buffer.counts_by_class(),
                       "bytes": self.buffer.nbytes()},
        }

    # -- checkpoint state -----------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to continue exactly where this learner stands."""
        return {
            "config": self.config.model_dump(),
            "input_shape": self.input_shape,
            "num_classes": self.num_classes,
            "model": {k: v.cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "buffer": self.buffer.state_dict(),
            "retention": self.retention.state_dict(),
            "matrix": self.matrix.state_dict(),
            "prequential": self.prequential.state_dict(),
            "counters": dict(self.counters),
            "guard": self.strategy.guard.state_dict(),
            "version": self.version,
            "open_bucket": self.open_bucket,
            "eval_sets": {b: (s.x.cpu(), s.labels.cpu()) for b, s in self.eval_sets.items() if isinstance(s, TensorSet)},
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.buffer.load_state_dict(state["buffer"])
        self.retention.load_state_dict(state["retention"])
        self.matrix.load_state_dict(state["matrix"])
        self.prequential.load_state_dict(state["prequential"])
        self.counters.update(state["counters"])
        if "guard" in state:  # checkpoints written before the update-size guard start it afresh
            self.strategy.guard.load_state_dict(state["guard"])
        self.version = state["version"]
        self.open_bucket = state["open_bucket"]
        for b, (x, y) in state["eval_sets"].items():
            self.eval_sets[b] = TensorSet(x, y)

    @classmethod
    def from_state_dict(cls, state: dict, device: str | None = None) -> "Learner":
        config = LearnerConfig(**{**state["config"], **({"device": device} if device else {})})
        learner = cls(config, state["input_shape"], state["num_classes"])
        learner.load_state_dict(state)
        return learner
