"""Held-out sets as the server keeps them: in the dtype they came in (uint8 samples stay uint8, a
quarter of a float copy, and are viewed per evaluation batch as the learner views what it trains
on: scaled to [0, 1], ImageNet-normalised with `uint8_inputs=imagenet`), and within a total budget of
samples and bytes across every registered set — which also bounds what they add to each checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from cl_engine.streams.base import StoredSet

from .errors import ResourceExhausted


def held(x: torch.Tensor, y: torch.Tensor):
    """The set as the learner holds it: uint8 samples as they are, anything else as float32."""
    return StoredSet(x, y)


def same(existing, x: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether a re-upload is the registered set, sample for sample and in the same dtype."""
    stored = getattr(existing, "x", None)
    return (isinstance(stored, torch.Tensor) and stored.dtype == x.dtype and stored.shape == x.shape
            and torch.equal(stored, x) and torch.equal(existing.labels, y))


def nbytes(s) -> int:
    x = getattr(s, "x", None)
    return (x.nelement() * x.element_size() if isinstance(x, torch.Tensor) else 0) + len(s) * 8  # + int64 labels


@dataclass(frozen=True)
class EvalSetBudget:
    max_samples: int = 1_000_000  # across every registered set
    max_bytes: int = 1024 * 1024 * 1024

    def check(self, registered: dict, bucket: int, x: torch.Tensor, y: torch.Tensor) -> None:
        """RESOURCE_EXHAUSTED naming the limit when the new set would take the total over it."""
        samples = sum(len(s) for s in registered.values())
        size = sum(nbytes(s) for s in registered.values())
        new_size = x.nelement() * x.element_size() + len(y) * 8
        if samples + len(y) > self.max_samples:
            raise ResourceExhausted(f"samples: the held-out set of bucket {bucket} ({len(y)} samples) would take the "
                                    f"sets' total to {samples + len(y)} samples, over the server's "
                                    f"max_eval_total_samples ({self.max_samples}); send fewer samples per set")
        if size + new_size > self.max_bytes:
            raise ResourceExhausted(f"samples: the held-out set of bucket {bucket} ({new_size} bytes as "
                                    f"{str(x.dtype).removeprefix('torch.')}) would take the sets' total to "
                                    f"{size + new_size} bytes, over the server's max_eval_total_bytes "
                                    f"({self.max_bytes}); send fewer samples per set, or uint8 samples")
