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
from .schedule import batches_per_bucket, bucket_batches
from .streams import Stream


def run_stream(stream: Stream, config: LearnerConfig, batch_size: int = 10, epochs: int = 1,
               progress: bool = True) -> dict:
    learner = Learner(config, stream.input_shape, stream.num_classes)
    for j, bucket in enumerate(stream.buckets):
        learner.register_eval_set(j, bucket.test)
    learner.matrix.set_initial(learner.evaluate_all())
    stream_seconds = 0.0  # observing batches; consolidation is added from the learner's own clock
    for i, bucket in enumerate(stream.buckets):
        n = len(bucket.train)
        bar = tqdm(total=batches_per_bucket(n, batch_size, epochs), desc=f"bucket {i + 1}/{len(stream)}",
                   unit="batch", file=sys.stderr, disable=not progress, leave=False)
        t0 = time.perf_counter()
        for k, index in enumerate(bucket_batches(n, batch_size, epochs, config.seed, i), 1):
            x, y = bucket.train.batch(index, train=True)
            step = learner.observe(x, y, i)
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
    return build_report(learner, stream, {"batch_size": batch_size, "epochs": epochs}, train_seconds)


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
