"""The in-process reference run: a stream played through one Learner, bucket by bucket.

Every held-out set is registered up front, so the matrix row before training (b) and the
forward-transfer entries above the diagonal are measured as well.
"""
from __future__ import annotations

import math
import sys
import time

import torch
from tqdm import tqdm

from .config import LearnerConfig
from .guard import REASONS
from .learner import Learner
from .metrics import forgetting_per_bucket
from .retention import memory_cut_warning
from .schedule import batches_per_bucket, bucket_batches, check_within
from .streams import Stream, stored_batch


def with_stream_defaults(config: LearnerConfig, stream: Stream) -> LearnerConfig:
    """`config` with the stream's learner defaults (e.g. an image stream's augmentation) where it sets none."""
    update = {k: v for k, v in stream.learner_defaults.items() if k not in config.model_fields_set}
    return LearnerConfig(**{**config.model_dump(exclude_unset=True), **update}) if update else config


def run_stream(stream: Stream, config: LearnerConfig, batch_size: int = 10, epochs: int = 1,
               progress: bool = True, within: str = "shuffled") -> dict:
    """Each batch is given as the stream stores it (`stored_batch`: uint8 images stay uint8) with its
    dataset indices as sample identities; the learner views (and augments) it itself. `within`: the
    order inside a bucket (schedule.py)."""
    check_within(within, stream.name, stream.undated_samples)
    config = with_stream_defaults(config, stream)
    learner = Learner(config, stream.input_shape, stream.num_classes)
    for j, bucket in enumerate(stream.buckets):
        learner.register_eval_set(j, bucket.test)
    learner.matrix.set_initial(learner.evaluate_all())
    cut = memory_cut_warning(config.model_dump(), [len(b.train) for b in stream.buckets])
    if cut:
        print(f"warning: {cut}", file=sys.stderr)
    stream_seconds = 0.0  # observing batches; consolidation is added from the learner's own clock
    for i, bucket in enumerate(stream.buckets):
        n = len(bucket.train)
        bar = tqdm(total=batches_per_bucket(n, batch_size, epochs), desc=f"bucket {i + 1}/{len(stream)}",
                   unit="batch", file=sys.stderr, disable=not progress, leave=False)
        t0 = time.perf_counter()
        learner.plan_bucket(i, batches_per_bucket(n, batch_size, epochs))
        for k, index in enumerate(bucket_batches(n, batch_size, epochs, config.seed, i, within), 1):
            x, y = stored_batch(bucket.train, index)
            step = learner.observe(x, y, i, ids=index)
            bar.update(1)
            if progress and k % 20 == 0:  # a disabled bar's n stays 0: test the count, not the bar
                bar.set_postfix(preq_acc=f"{learner.prequential.accuracy:.3f}", loss=f"{step.loss:.3f}")
        bar.close()
        t1 = time.perf_counter()
        stream_seconds += t1 - t0
        learner.end_bucket(i, bucket_size=n)
        if progress:
            row = learner.matrix.rows[-1]
            print(f"bucket {i + 1}/{len(stream)} done: {n * epochs} samples in {t1 - t0:.1f}s, "
                  f"held-out accuracy " + " ".join("-" if math.isnan(a) else f"{a:.3f}" for a in row),
                  file=sys.stderr)
    train_seconds = stream_seconds + learner.seconds["consolidate"]
    report = build_report(learner, stream, {"batch_size": batch_size, "epochs": epochs, "within_bucket": within},
                          train_seconds)
    report["buffer"]["cut_warning"] = cut
    return report


def build_report(learner: Learner, stream: Stream, run_settings: dict, train_seconds: float) -> dict:
    R = learner.matrix.matrix()
    status = learner.status()
    return {
        "stream": stream.summary(),
        "strategy": learner.config.strategy,
        "config": {**learner.config.model_dump(), **run_settings, "device_used": str(learner.device)},
        "accuracy_matrix": R.tolist(),
        "initial_accuracy": learner.matrix.initial_row().tolist(),
        "metrics": learner.metrics(),
        "forgetting_per_bucket": forgetting_per_bucket(R),
        "samples_trained": learner.counters["samples_trained"],
        "batches_trained": learner.counters["batches_trained"],
        "train_seconds": train_seconds,
        "eval_seconds": learner.seconds["evaluate"],
        "samples_per_second": learner.counters["samples_trained"] / train_seconds if train_seconds else None,
        "prequential_accuracy": status["prequential_accuracy_overall"],
        "gem_projections": learner.counters["projections"],
        "qp_fallbacks": learner.counters["qp_fallbacks"],
        "skipped_steps": {r: learner.counters[f"skipped_{r}"] for r in REASONS},
        "buffer": status["buffer"],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
