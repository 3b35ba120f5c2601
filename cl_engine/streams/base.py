"""What every stream is made of: buckets of labelled samples, in time order.

A `SampleSet` is anything that can hand out batches by index. Small streams keep their
samples in memory (`TensorSet`); image datasets decode on demand behind the same interface,
so a bucket of CLEAR images never has to fit in memory at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import torch


class SampleSet(Protocol):
    """Indexable labelled samples. `labels` is the int64 label of every sample, in order."""

    labels: torch.Tensor

    def __len__(self) -> int: ...

    def batch(self, index: torch.Tensor, train: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples `index` (int64 positions) as (x float32 [n, *input_shape], y int64 [n]).

        `train=True` lets a set apply training-time augmentation; evaluation uses `False`.
        """
        ...


def stored_batch(samples: SampleSet, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples `index` as they arrive at the learner to be trained on: a set that can give them
    un-augmented in their compact form (`stored`, e.g. an image set's uint8 pixels, which the learner
    views and augments itself: views.py) does; any other gives its training batch."""
    stored = getattr(samples, "stored", None)
    return stored(index) if stored is not None else samples.batch(index, train=True)


def stored_files(samples: SampleSet, index: torch.Tensor) -> list[bytes] | None:
    """The encoded files of samples `index`, byte for byte as they are on disk, for a set of image files
    (ImageSet, or a view of one) that a server can decode as the set does; None for any other set."""
    files = getattr(samples, "files", None)
    return files(index) if files is not None else None


class TensorSet:
    """A SampleSet held in memory as one float32 tensor and one int64 label tensor."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]} labels")
        self.x = x.float().contiguous()
        self.labels = y.long().contiguous()

    def __len__(self) -> int:
        return self.labels.shape[0]

    def batch(self, index: torch.Tensor, train: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.labels[index]


class ScaledSet:
    """uint8 samples held as they are and scaled to [0, 1] float32 per batch, a quarter of the memory
    of a float copy; `transform` (a function of a float batch) is applied after scaling."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if x.dtype != torch.uint8:
            raise ValueError(f"ScaledSet holds uint8 samples, got {x.dtype}")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]} labels")
        self.x = x
        self.labels = y.long().contiguous()
        self.transform = transform

    def __len__(self) -> int:
        return self.labels.shape[0]

    def batch(self, index: torch.Tensor, train: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[index].float() / 255.0
        if self.transform is not None:
            x = self.transform(x)
        return x, self.labels[index]


class StoredSet:
    """Samples held as they arrived (uint8 stays uint8) and handed out so, for the learner to view
    them as it views its memory (views.py: uint8 scaled, and ImageNet-normalised where configured).
    The server keeps held-out sets this way, so a set is evaluated as its samples are trained on."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]} labels")
        self.x = x if x.dtype == torch.uint8 else x.float().contiguous()
        self.labels = y.long().contiguous()

    def __len__(self) -> int:
        return self.labels.shape[0]

    def batch(self, index: torch.Tensor, train: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.labels[index]


@dataclass
class Bucket:
    """One time step of the stream: what arrives to train on, and its held-out test split."""

    train: SampleSet
    test: SampleSet
    name: str = ""


@dataclass
class Stream:
    """A dataset replayed as a time-ordered sequence of buckets."""

    name: str
    buckets: list[Bucket]
    input_shape: tuple[int, ...]
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    value_range: tuple[float, float] | None = None  # every sample value lies in it (None: not declared)
    # learner settings its stored samples need (e.g. {"augment": "crop-flip", "uint8_inputs": "imagenet"}
    # for an image stream whose training samples are uint8 pixels): the default of those settings
    learner_defaults: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.class_names:
            self.class_names = [str(c) for c in range(self.num_classes)]
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"stream {self.name!r}: {len(self.class_names)} class names for {self.num_classes} classes"
            )

    def __len__(self) -> int:
        return len(self.buckets)

    @property
    def undated_samples(self) -> int | None:
        """Samples without an upload date (None: the stream has no upload dates at all)."""
        return self.info.get("samples_without_upload_time")

    def summary(self) -> dict:
        return {
            "name": self.name,
            "buckets": len(self.buckets),
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            **({"value_range": list(self.value_range)} if self.value_range else {}),
            "train_sizes": [len(b.train) for b in self.buckets],
            "test_sizes": [len(b.test) for b in self.buckets],
            **self.info,
        }


class SubsetSet:
    """A lazy view of some positions of another set."""

    def __init__(self, base: SampleSet, index: torch.Tensor):
        self.base = base
        self.index = index.long()
        self.labels = base.labels[self.index]

    def __len__(self) -> int:
        return self.index.shape[0]

    def batch(self, index: torch.Tensor, train: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        return self.base.batch(self.index[index], train)

    def stored(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return stored_batch(self.base, self.index[index])

    def files(self, index: torch.Tensor) -> list[bytes] | None:
        return stored_files(self.base, self.index[index])


class ConcatSet:
    """A lazy concatenation of sets, in order."""

    def __init__(self, sets: Sequence[SampleSet]):
        self.sets = list(sets)
        sizes = torch.tensor([len(s) for s in self.sets])
        self.starts = torch.cumsum(sizes, 0) - sizes
        self.labels = torch.cat([s.labels for s in self.sets])

    def __len__(self) -> int:
        return self.labels.shape[0]

    def batch(self, index: torch.Tensor, train: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        return self._gather(index, lambda s, i: s.batch(i, train))

    def stored(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._gather(index, stored_batch)

    def files(self, index: torch.Tensor) -> list[bytes] | None:
        index = index.long()
        owner = (torch.searchsorted(self.starts, index, right=True) - 1).tolist()
        found = [stored_files(self.sets[k], (index[i: i + 1] - self.starts[k])) for i, k in enumerate(owner)]
        return None if any(f is None for f in found) else [f[0] for f in found]

    def _gather(self, index: torch.Tensor, get) -> tuple[torch.Tensor, torch.Tensor]:
        index = index.long()
        owner = torch.searchsorted(self.starts, index, right=True) - 1
        xs: list[torch.Tensor] = []
        order: list[torch.Tensor] = []
        for k in owner.unique().tolist():
            at = (owner == k).nonzero().flatten()
            x, _ = get(self.sets[k], index[at] - self.starts[k])
            xs.append(x)
            order.append(at)
        x = torch.cat(xs)[torch.argsort(torch.cat(order))]
        return x, self.labels[index]


def iid_buckets(stream: Stream, generator: torch.Generator) -> Stream:
    """The upper-bound reference: all training samples shuffled, cut into as many equal buckets.

    Test splits stay as they were, so the accuracy matrix keeps its meaning per real bucket.
    """
    everything = ConcatSet([b.train for b in stream.buckets])
    order = torch.randperm(len(everything), generator=generator)
    chunks = torch.tensor_split(order, len(stream.buckets))
    buckets = [Bucket(SubsetSet(everything, c), b.test, b.name) for c, b in zip(chunks, stream.buckets)]
    return Stream(
        f"{stream.name} (iid)", buckets, stream.input_shape, stream.num_classes, stream.class_names,
        {**stream.info, "order": "iid"}, stream.value_range, stream.learner_defaults,
    )
