"""One Learner owns a model, its optimizer, a strategy, the replay memory and the metrics.

It knows nothing of gRPC. Buckets are trained in order 0, 1, 2, …: `observe` batches of the open
bucket (test-then-train: each batch is scored by the model before it learns from it), then
`end_bucket` consolidates the memory and adds a row to the accuracy matrix, measured on every
registered held-out set.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from .buffer import ReplayBuffer
from .config import LearnerConfig
from .metrics import AccuracyMatrix, PrequentialWindow
from .models import build_model
from .precision import model_autocast, prepare
from .retention import BucketRetention, ReservoirRetention
from .streams.base import SampleSet, ScaledSet, StoredSet, TensorSet
from .strategies import STRATEGIES, Context
from .lr_schedule import lr_at
from .views import InputView

EVAL_BATCH = 512  # evaluation and scoring batch of models without convolutions
# conv models: 64 to 128 is about 1.7× faster per image than 512 on a CPU's caches (1 thread, 3×32×32 reduced
# ResNet18: 532 against 302 images/s; ResNet18 103 against 70 at 32 vs 256; BENCHMARKS.md, conv_images)
CONV_EVAL_BATCH = 64
log = logging.getLogger(__name__)


@dataclass
class StepResult:
    correct: int
    total: int
    loss: float
    version: int
    lr: float  # the learning rate of this step
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


def eval_batch_of(model: nn.Module) -> int:
    """The batch in which `model` is evaluated, scored and served: smaller for conv models."""
    return CONV_EVAL_BATCH if any(isinstance(m, nn.Conv2d) for m in model.modules()) else EVAL_BATCH


def on_cpu(value):
    """`value` with every tensor nested in its dicts and lists on the CPU (a CPU tensor as it is)."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: on_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [on_cpu(v) for v in value]
    return value


class Learner:
    def __init__(self, config: LearnerConfig, input_shape: tuple[int, ...], num_classes: int):
        self.config = config
        self.input_shape = tuple(int(d) for d in input_shape)
        self.num_classes = int(num_classes)
        self.device = resolve_device(config.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.model: nn.Module = prepare(build_model(config.model, self.input_shape, self.num_classes).to(self.device),
                                            config.precision, config.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.eval_batch = eval_batch_of(self.model)
        self.view = InputView(config.augment, config.uint8_inputs)
        self.augment_generator = torch.Generator().manual_seed(config.seed + 1)  # crops: apart from the memory's draws
        strategy_cls = STRATEGIES[config.strategy]
        capacity = config.buffer_capacity if strategy_cls.uses_memory else 0
        self.buffer = ReplayBuffer(capacity, self.device)
        self.buffer.training_view = self.training_view
        self.buffer.evaluation_view = self.view.evaluation
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
        self.planned_batches: int | None = None  # the open bucket's batches, all epochs (the lr schedule's T)
        self.bucket_step = 0  # batches of the open bucket observed so far

    # -- training -------------------------------------------------------------------------------

    def check_batch(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Raise ValueError naming what is wrong with a batch, before anything is applied."""
        if x.ndim < 1 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"samples have shape {tuple(x.shape)}; expected (n, {', '.join(map(str, self.input_shape))})")
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"labels have shape {tuple(y.shape)}; expected ({x.shape[0]},), one per sample")
        if x.shape[0] == 0:
            raise ValueError("empty batch; expected at least one sample")
        if not x.is_floating_point() and x.dtype != torch.uint8:
            raise ValueError(f"samples have dtype {x.dtype}; expected a float or uint8 tensor")
        if x.is_floating_point() and not math.isfinite(float(x.sum())) and not bool(torch.isfinite(x).all()):  # a finite sum: all finite
            raise ValueError("samples contain NaN or Inf")
        if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"labels have dtype {y.dtype}; expected integers")
        low, high = (int(v) for v in torch.aminmax(y))
        if low < 0 or high >= self.num_classes:
            raise ValueError(f"labels span {low}..{high}; expected 0..{self.num_classes - 1}")

    def plan_bucket(self, bucket: int, batches: int | None) -> None:
        """Declare how many batches (all epochs) the open bucket will have, before its first; the cosine
        learning-rate schedule needs it. The first declaration of a bucket holds; None declares nothing.
        ValueError when the schedule needs a plan and the bucket has none."""
        self.check_bucket(bucket)
        if batches is not None and batches < 1:
            raise ValueError(f"got {batches}; expected the bucket's planned batch count, at least 1")
        if self.planned_batches is None and batches is not None:
            self.planned_batches = int(batches)
        if self.config.lr_schedule == "cosine" and self.planned_batches is None:
            raise ValueError("got none; the cosine learning-rate schedule needs the bucket's planned batch count "
                             "(all epochs) with its first batch")

    def check_bucket(self, bucket: int) -> None:
        if bucket < self.open_bucket:
            raise ValueError(f"bucket {bucket} is already finished; the open bucket is {self.open_bucket}")
        if bucket > self.open_bucket:
            raise ValueError(f"bucket {bucket} is not the open bucket {self.open_bucket}; buckets are trained in "
                             f"order, so end bucket {self.open_bucket} first")

    def observe(self, x: torch.Tensor, y: torch.Tensor, bucket: int, ids: torch.Tensor | None = None) -> StepResult:
        """Score the batch with the current model, then take one update step on it.

        `ids`: each sample's identity within its bucket (its dataset index), so the memory is offered
        each sample once however many epochs repeat it; None: identities from the samples' contents.

        A step the guard refuses (non-finite loss, gradient or resulting weights) changes nothing:
        no weights, no memory, no counters but its skip count; the result says why (`skipped`)."""
        self.check_bucket(bucket)
        self.check_batch(x, y)
        return self.observe_checked(x, y, bucket, ids)

    def observe_checked(self, x: torch.Tensor, y: torch.Tensor, bucket: int,
                        ids: torch.Tensor | None = None) -> StepResult:
        """observe() for a batch that has just passed check_bucket and check_batch on this learner (the
        server's worker runs them first, to answer each failure with its own status code): the same step,
        without checking the batch again."""
        if self.version == 0 and not self.matrix.initial and self.eval_sets:
            self.matrix.set_initial(self.evaluate_all())
        if self.config.lr_schedule != "constant":
            for group in self.optimizer.param_groups:
                group["lr"] = lr_at(self.config.lr_schedule, self.config.lr, self.bucket_step, self.planned_batches)
        lr = self.optimizer.param_groups[0]["lr"]
        self.bucket_step += 1  # by position: a batch the guard refuses takes its step of the schedule too
        x = x.to(self.device) if x.dtype == torch.uint8 else x.to(self.device, torch.float32)  # stored as arrived
        y = y.to(self.device, torch.int64)
        self.strategy.guard.save_buffers()  # batch-norm statistics move in the forward pass
        out = self.strategy.observe(self.training_view(x), y, bucket)
        if out.skipped is not None:
            self.strategy.guard.put_back_buffers()
            return StepResult(0, y.shape[0], out.loss, self.version, lr, out.skipped)
        if self.strategy.uses_memory:
            self.retention.observe(x, y, bucket, self.generator, ids=ids)
        correct, n = int((out.logits.argmax(dim=1) == y).sum()), y.shape[0]
        self.prequential.add(correct, n)
        self.counters["samples_trained"] += n
        self.counters["batches_trained"] += 1
        self.version += 1
        return StepResult(correct, n, out.loss, self.version, lr)

    def end_bucket(self, bucket: int, bucket_size: int | None = None) -> dict[int, float]:
        """Consolidate the memory, measure every held-out set, and open the next bucket.

        `bucket_size` is the number of distinct samples in the bucket, for ratio retention when
        a bucket is trained for several epochs. Returns the new row of the accuracy matrix.
        """
        self.check_bucket(bucket)
        t0 = time.perf_counter()
        if self.strategy.uses_memory:
            self.retention.end_bucket(bucket, self.logits, self.config.selection, self.generator, bucket_size)
            self._warn_if_cut(bucket)
        t1 = time.perf_counter()
        row = self.evaluate_all()
        self.matrix.add_row(bucket, row)
        self.open_bucket += 1
        self.planned_batches, self.bucket_step = None, 0
        self.seconds["consolidate"] += t1 - t0
        self.seconds["evaluate"] += time.perf_counter() - t1
        return row

    def _warn_if_cut(self, bucket: int) -> None:
        asked = getattr(self.retention, "asked", {})
        kept = self.buffer.counts_by_bucket()
        short = {b: (kept.get(b, 0), k) for b, k in asked.items() if kept.get(b, 0) < k}
        if short:
            log.warning("after bucket %d the replay memory (capacity %s) holds fewer than asked, kept/asked per "
                        "bucket: %s", bucket, self.buffer.limit,
                        ", ".join(f"{b}: {k}/{a}" for b, (k, a) in sorted(short.items())))

    def training_view(self, x: torch.Tensor) -> torch.Tensor:
        """x as the model trains on it: viewed afresh (augmented, where configured) at every use."""
        return self.view.training(x, self.augment_generator)

    # -- inference ------------------------------------------------------------------------------

    @torch.inference_mode()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        with model_autocast(self.model, self.device):
            out = torch.cat([self.model(self.view.evaluation(x[i: i + self.eval_batch].to(self.device))).float()
                             for i in range(0, len(x), self.eval_batch)])
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
        for start in range(0, len(samples), self.eval_batch):
            x, y = samples.batch(torch.arange(start, min(start + self.eval_batch, len(samples))))
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
            "buffer": {"size": len(self.buffer), "capacity": self.buffer.capacity, "bounded": self.buffer.bounded,
                       "by_bucket": self.buffer.counts_by_bucket(),
                       "asked_by_bucket": dict(getattr(self.retention, "asked", {})),
                       "by_class": self.buffer.counts_by_class(), "bytes": self.buffer.nbytes()},
        }

    # -- checkpoint state -----------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to continue exactly where this learner stands, every tensor on the CPU (a
        CUDA learner's state loads anywhere, and copies kept for rollback hold no device memory)."""
        return {
            "config": self.config.model_dump(),
            "input_shape": self.input_shape,
            "num_classes": self.num_classes,
            "model": {k: v.cpu() for k, v in self.model.state_dict().items()},
            "optimizer": on_cpu(self.optimizer.state_dict()),  # momentum buffers; loading moves them back
            "generator": self.generator.get_state(),
            "augment_generator": self.augment_generator.get_state(),
            "buffer": self.buffer.state_dict(),
            "retention": self.retention.state_dict(),
            "matrix": self.matrix.state_dict(),
            "prequential": self.prequential.state_dict(),
            "counters": dict(self.counters),
            "guard": self.strategy.guard.state_dict(),
            "loss_scale": self.strategy.loss_scale.state_dict(),
            "strategy": self.strategy.state_dict(),
            "version": self.version,
            "open_bucket": self.open_bucket,
            "planned_batches": self.planned_batches,
            "bucket_step": self.bucket_step,
            "eval_sets": {b: (s.x.cpu(), s.labels.cpu()) for b, s in self.eval_sets.items()  # uint8 stays uint8
                          if isinstance(s, (TensorSet, StoredSet)) or (isinstance(s, ScaledSet) and s.transform is None)},
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        if "augment_generator" in state:  # absent from checkpoints written before augmentation moved here
            self.augment_generator.set_state(state["augment_generator"])
        self.buffer.load_state_dict(state["buffer"])
        self.retention.load_state_dict(state["retention"])
        self.matrix.load_state_dict(state["matrix"])
        self.prequential.load_state_dict(state["prequential"])
        self.counters.update(state["counters"])
        if "guard" in state:  # checkpoints written before the update-size guard start it afresh
            self.strategy.guard.load_state_dict(state["guard"])
        if "loss_scale" in state:  # fp16's; absent from checkpoints before precision options
            self.strategy.loss_scale.load_state_dict(state["loss_scale"])
        if state.get("strategy"):  # replay's memory batch; absent from checkpoints before it (it restarts at the next batch)
            self.strategy.load_state_dict(state["strategy"])
        self.version = state["version"]
        self.open_bucket = state["open_bucket"]
        self.planned_batches = state.get("planned_batches")  # absent from checkpoints before lr schedules
        self.bucket_step = state.get("bucket_step", 0)
        for b, (x, y) in state["eval_sets"].items():  # uint8: viewed as the learner views its samples
            self.eval_sets[b] = StoredSet(x, y) if x.dtype == torch.uint8 else TensorSet(x, y)

    @classmethod
    def from_state_dict(cls, state: dict, device: str | None = None) -> "Learner":
        config = LearnerConfig(**{**state["config"], **({"device": device} if device else {})})
        learner = cls(config, state["input_shape"], state["num_classes"])
        learner.load_state_dict(state)
        return learner
