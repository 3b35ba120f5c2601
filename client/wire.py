"""The client's side of the wire format: tensors and images into `Samples`, replies out of the
generated messages into plain Python values (lists, dicts, floats; NaN where the server says
"not measured").

The encoding follows the contract in proto/clstream/v1/continual_learner.proto: row-major,
little-endian uint8 / float16 / float32; any other dtype is sent as float32.
"""
from __future__ import annotations

import json
from typing import Iterable, Sequence

import numpy as np

from clstream_proto import continual_learner_pb2 as pb

_WIRE_DTYPES = {
    np.dtype("uint8"): pb.DTYPE_UINT8,
    np.dtype("float16"): pb.DTYPE_FLOAT16,
    np.dtype("float32"): pb.DTYPE_FLOAT32,
}


def to_numpy(x) -> np.ndarray:
    """A numpy view of a torch tensor or array-like (detached, on the CPU)."""
    if hasattr(x, "detach"):  # a torch tensor; torch itself is not needed to send numpy arrays
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def encode_tensor(x) -> pb.Tensor:
    array = to_numpy(x)
    if array.dtype not in _WIRE_DTYPES:
        array = array.astype(np.float32)
    wire = _WIRE_DTYPES[array.dtype]
    array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return pb.Tensor(shape=list(array.shape), dtype=wire, data=array.tobytes())


def encode_samples(x) -> pb.Samples:
    """Samples from an [n, *input_shape] tensor or array."""
    return pb.Samples(tensor=encode_tensor(x))


def encode_images(images: Iterable[bytes]) -> pb.Samples:
    """Samples from whole JPEG or PNG files (the server decodes and preprocesses them)."""
    return pb.Samples(images=pb.EncodedImages(images=list(images)))


def labels_list(y) -> list[int]:
    return [int(v) for v in to_numpy(y).reshape(-1)]


def metrics_dict(m: pb.LearningMetrics) -> dict[str, float]:
    return {f.name: getattr(m, f.name) for f in pb.LearningMetrics.DESCRIPTOR.fields}


def row_list(row: pb.AccuracyRow) -> list[float]:
    return list(row.accuracy)


def schema_message(class_names: Sequence[str], input_shape: Sequence[int],
                   value_range: tuple[float, float] | None = None) -> pb.Schema:
    low, high = value_range if value_range is not None else (None, None)
    return pb.Schema(class_names=list(class_names), input_shape=[int(d) for d in input_shape], value_min=low,
                     value_max=high)


def status_dict(s: pb.Status) -> dict:
    """Everything GetStatus says, as plain values; `config` is the decoded effective configuration."""
    return {
        "has_model": s.has_model,
        "schema": {"class_names": list(s.schema.class_names), "input_shape": list(s.schema.input_shape)},
        "model_version": s.model_version,
        "serving_version": s.serving_version,
        "open_bucket": s.open_bucket,
        "samples_trained": s.samples_trained,
        "batches_trained": s.batches_trained,
        "prequential_accuracy": s.prequential_accuracy,
        "prequential_accuracy_overall": s.prequential_accuracy_overall,
        "accuracy_matrix": [row_list(r) for r in s.accuracy_matrix],
        "initial_accuracy": row_list(s.initial_accuracy),
        "metrics": metrics_dict(s.metrics),
        "forgetting_per_bucket": list(s.forgetting_per_bucket),
        "buffer": {"size": s.buffer.size, "capacity": s.buffer.capacity, "bytes": s.buffer.bytes,
                   "by_bucket": {int(k): int(v) for k, v in sorted(s.buffer.by_bucket.items())},
                   "by_class": {int(k): int(v) for k, v in sorted(s.buffer.by_class.items())},
                   "asked_by_bucket": {int(k): int(v) for k, v in sorted(s.buffer.asked_by_bucket.items())},
                   "bounded": s.buffer.bounded},
        "gem_projections": s.gem_projections,
        "qp_fallbacks": s.qp_fallbacks,
        "applied_sequences": dict(s.applied_sequences),
        "eval_buckets": list(s.eval_buckets),
        "queue_depth": s.queue_depth,
        "queue_capacity": s.queue_capacity,
        "batches_since_checkpoint": s.batches_since_checkpoint,
        "checkpoint_error": s.checkpoint_error,
        "durable_sequences": dict(s.durable_sequences),
        "skipped_steps": dict(s.skipped_steps),
        "promotion": {"enabled": s.promotion.enabled, "promotions": s.promotion.promotions,
                      "rejections": s.promotion.rejections, "canary_accuracy": s.promotion.canary_accuracy,
                      "serving_canary_accuracy": s.promotion.serving_canary_accuracy,
                      "last_rejection": s.promotion.last_rejection},
        "rollback_versions": list(s.rollback_versions),
        "drift": {"statistic": s.drift.statistic, "threshold": s.drift.threshold, "events": s.drift.events,
                  "last_event_version": s.drift.last_event_version},
        "last_checkpoint": s.last_checkpoint,
        "last_checkpoint_time": s.last_checkpoint_time,
        "config": json.loads(s.config_json) if s.config_json else {},
    }
