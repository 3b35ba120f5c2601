"""The replay memory: preallocated tensors with a hard capacity, and accounting by bucket and class.

Slots 0..size-1 hold samples as they arrived (uint8 images stay uint8); each carries its label,
the bucket it came from, its sample identity (`ids`: the dataset index, or a hash of its contents
where the sender gave none; see `content_ids`) and a keep-first priority (see selection.py).
Storage is allocated in the shape and dtype of the first samples. A bounded memory
(`ReplayBuffer(capacity)`) allocates its capacity once and never grows past it; an unbounded one
(`ReplayBuffer(None)`) holds exactly what its retention asks: `reserve` grows it as buckets arrive.

What leaves the memory to be learned from is viewed on the way out (views.py): `draw` (replay's
batches) and `sample` give the training view (augmented afresh on every draw), `grouped` (GEM's
constraints) the evaluation view; `get` gives samples as stored. Both views are the identity unless
the learner sets them.

`draw` walks the memory in passes, as a shuffled data loader over it would (Avalanche's
ReplayDataLoader does): each pass is a fresh random order of every memory, handed out n at a time,
so every memory is replayed once before any is replayed twice. Independent uniform draws of n per
step (`sample`) leave some memories unreplayed for a whole bucket while others come up several
times (BENCHMARKS.md, "Where the peer goals stand"). A change of the contents starts a new pass.

Every change (write, keep, or setting `size`) bumps `version`, so that what is derived from the
contents (the buckets held, the memories grouped by bucket for GEM) is computed once per change
instead of once per step. Change the contents only through those.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch


def content_ids(x: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """An int64 identity per sample from its contents (equal samples, equal ids), for senders that give
    none: a random linear hash of the sample's bytes, wrapping in int64, computed `chunk` samples at a
    time, so no wide copy of a large batch is ever made."""
    flat = x.reshape(len(x), -1)
    if flat.dtype.is_floating_point:
        flat = flat.float().view(torch.int32)
    weights = _hash_weights(flat.shape[1], x.device)
    return torch.cat([(flat[i: i + chunk].long() * weights).sum(dim=1) for i in range(0, len(flat), chunk)]
                     or [torch.empty(0, dtype=torch.int64, device=x.device)])


@functools.lru_cache(maxsize=8)
def _hash_weights(features: int, device: torch.device) -> torch.Tensor:
    """content_ids' odd int64 weights, one per feature: the same for every call (made once per shape and device)."""
    g = torch.Generator().manual_seed(1234)
    return torch.randint(-(2 ** 62), 2 ** 62, (features,), generator=g, dtype=torch.int64).to(device) | 1


class ReplayBuffer:
    def __init__(self, capacity: int | None, device: torch.device | str = "cpu"):
        if capacity is not None and capacity < 0:
            raise ValueError(f"buffer capacity must be >= 0, got {capacity}")
        self.limit = capacity  # None: unbounded, grown by `reserve`
        self.capacity = capacity or 0  # slots allocated now
        self.device = torch.device(device)
        self.version = 0  # bumped by every change to the contents
        self._derived: dict = {}  # cached views of the contents, valid for one version
        self._size = 0
        self._pass: tuple[torch.Tensor, int, int] | None = None  # draw's pass: (order, next position, version)
        self.x: torch.Tensor | None = None
        self.y = torch.empty(self.capacity, dtype=torch.int64, device=self.device)
        self.bucket = torch.empty(self.capacity, dtype=torch.int64, device=self.device)
        self.ids = torch.empty(self.capacity, dtype=torch.int64, device=self.device)
        self.priority = torch.empty(self.capacity, dtype=torch.float32, device=self.device)
        self.training_view: Callable[[torch.Tensor], torch.Tensor] = lambda x: x
        self.evaluation_view: Callable[[torch.Tensor], torch.Tensor] = lambda x: x

    @property
    def bounded(self) -> bool:
        return self.limit is not None

    def reserve(self, n: int) -> None:
        """Make room for n samples in all: an unbounded memory grows to n slots (keeping its contents);
        a bounded one only checks that n fits."""
        if n <= self.capacity:
            return
        if self.bounded:
            raise ValueError(f"{n} samples do not fit a memory of capacity {self.limit}")
        for name in ("x", "y", "bucket", "ids", "priority"):
            old = getattr(self, name)
            if old is None:
                continue
            new = torch.empty((n, *old.shape[1:]), dtype=old.dtype, device=self.device)
            new[: self.size] = old[: self.size]
            setattr(self, name, new)
        self.capacity = n
        self._changed()

    @property
    def size(self) -> int:
        """Slots filled: 0..size-1. Setting it (e.g. to 0, to empty the memory) counts as a change."""
        return self._size

    @size.setter
    def size(self, n: int) -> None:
        self._size = n
        self._changed()

    def _changed(self) -> None:
        self.version += 1
        self._derived.clear()

    def _cached(self, key, compute):
        if key not in self._derived:
            self._derived[key] = compute()
        return self._derived[key]

    def __len__(self) -> int:
        return self.size

    def _ensure_storage(self, x: torch.Tensor) -> None:
        if self.x is None:
            self.x = torch.empty((self.capacity, *x.shape[1:]), dtype=x.dtype, device=self.device)
        elif x.shape[1:] != self.x.shape[1:]:
            raise ValueError(f"buffer holds samples of shape {tuple(self.x.shape[1:])}, got {tuple(x.shape[1:])}")

    def write(self, slots: torch.Tensor, x: torch.Tensor, y: torch.Tensor, bucket: torch.Tensor | int,
              priority: torch.Tensor | float = 0.0, ids: torch.Tensor | None = None) -> None:
        """Store samples into `slots` (distinct, each < size or == the next free slot onwards).
        `ids`: their identities (None: from their contents)."""
        if len(slots) == 0:
            return
        self._ensure_storage(x)
        slots = slots.to(self.device)
        self.x.index_copy_(0, slots, x.to(self.device, self.x.dtype))
        self.y.index_copy_(0, slots, y.to(self.device, torch.int64))
        self.ids.index_copy_(0, slots, (content_ids(x) if ids is None else ids).to(self.device, torch.int64))
        for column, value in ((self.bucket, bucket), (self.priority, priority)):
            if isinstance(value, torch.Tensor) and value.ndim:
                column.index_copy_(0, slots, value.to(self.device, column.dtype))
            else:  # one value for every slot
                column.index_fill_(0, slots, value)
        self.size = max(self.size, int(slots.max()) + 1)  # a change, even when size stays

    def append(self, x: torch.Tensor, y: torch.Tensor, bucket: int, priority: float = 0.0,
               ids: torch.Tensor | None = None) -> None:
        """Store samples in the next free slots: slice copies, cheaper than `write`'s scatter."""
        n = len(y)
        if self.size + n > self.capacity:
            raise ValueError(f"{n} samples do not fit: {self.size} of {self.capacity} slots are taken")
        self._ensure_storage(x)
        rows = slice(self.size, self.size + n)
        self.x[rows], self.y[rows], self.bucket[rows], self.priority[rows] = x, y, bucket, priority
        self.ids[rows] = content_ids(x) if ids is None else ids
        self.size = self.size + n

    def keep(self, slots: torch.Tensor) -> None:
        """Keep only `slots`, compacted to the front in the given order."""
        slots = slots.to(self.device)
        n = len(slots)
        if self.x is not None:
            self.x[:n] = self.x[slots]
        self.y[:n], self.bucket[:n], self.priority[:n] = self.y[slots], self.bucket[slots], self.priority[slots]
        self.ids[:n] = self.ids[slots]
        self.size = n

    def get(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        slots = slots.to(self.device)
        return self.x.index_select(0, slots), self.y.index_select(0, slots)

    def slots(self, buckets: torch.Tensor | None = None) -> torch.Tensor:
        """Filled slots, optionally only those whose bucket is in `buckets`."""
        all_slots = torch.arange(self.size, device=self.device)
        if buckets is None:
            return all_slots
        return all_slots[torch.isin(self.bucket[: self.size], buckets.to(self.device))]

    def sample(self, n: int, generator: torch.Generator, buckets: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """n samples drawn uniformly without replacement (all of them if fewer are held), in their
        training view."""
        if buckets is None:  # every filled slot: the permutation is the slots themselves
            picks = torch.randperm(self.size, generator=generator)[:n] if self.size > n else torch.arange(self.size)
        else:
            picks = self.slots(buckets)
            if len(picks) > n:
                picks = picks[torch.randperm(len(picks), generator=generator)[:n].to(self.device)]
        x, y = self.get(picks)
        return self.training_view(x), y

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The next n memories of the current pass over the memory, in their training view (all of them
        if at most n are held). A pass is a random order of every filled slot, drawn when the previous
        pass is used up or the contents changed; its last draw is shorter when n does not divide the size."""
        if self.size <= n:
            picks = torch.arange(self.size)
        else:
            order, position, version = self._pass or (None, 0, -1)
            if version != self.version or position >= self.size:
                order, position = self.pass_order(generator), 0
            picks = order[position: position + n]
            self._pass = (order, position + len(picks), self.version)
        x, y = self.get(picks)
        return self.training_view(x), y

    def pass_order(self, generator: torch.Generator) -> torch.Tensor:
        """The order of `draw`'s next pass: a random permutation of the filled slots. (One place, so that
        benchmarks/peer_avalanche.py's replay equivalence check can walk the memory in slot order, as an
        unshuffled loader walks the peer's.)"""
        return torch.randperm(self.size, generator=generator)

    def buckets_held(self) -> list[int]:
        return list(self._cached("held", lambda: sorted(self.bucket[: self.size].unique().tolist())))

    def grouped(self, buckets: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The memories of `buckets` as x (T, m, ...), y (T, m) and counts (T,), m the largest count.

        Groups shorter than m are padded (with copies of their first sample); `counts` says how many
        of each row are real. Where the buckets lie in the buffer as consecutive runs of equal
        length, in the order asked for (as bucket retention keeps them), x and y are views of the
        storage, no copy; otherwise they are gathered once per version of the contents.
        """
        def compute():
            x, y, counts = self._grouped(buckets)
            return self.evaluation_view(x), y, counts
        return self._cached(("grouped", tuple(buckets)), compute)

    def _runs(self) -> dict[int, tuple[int, int]]:
        """bucket -> (first slot, count) when every bucket occupies one run of slots, else {}."""
        def compute():
            ids, counts = torch.unique_consecutive(self.bucket[: self.size], return_counts=True)
            ids, counts = ids.tolist(), counts.tolist()
            if len(set(ids)) != len(ids):
                return {}
            starts = [0]
            for c in counts[:-1]:
                starts.append(starts[-1] + c)
            return {b: (s, c) for b, s, c in zip(ids, starts, counts)}
        return self._cached("runs", compute)

    def _grouped(self, buckets: list[int]):
        if not buckets:
            raise ValueError("no buckets asked for")
        runs = self._runs()
        if all(b in runs for b in buckets):
            first, m = runs[buckets[0]]
            if all(runs[b] == (first + i * m, m) for i, b in enumerate(buckets)) and m > 0:
                n = len(buckets) * m
                counts = torch.full((len(buckets),), m, dtype=torch.int64, device=self.device)
                return (self.x[first: first + n].view(len(buckets), m, *self.x.shape[1:]),
                        self.y[first: first + n].view(len(buckets), m), counts)
        groups = [self.slots(torch.tensor([b])) for b in buckets]
        counts = torch.tensor([len(s) for s in groups], dtype=torch.int64, device=self.device)
        if int(counts.min()) == 0:
            raise ValueError(f"bucket {buckets[int(counts.argmin())]} has no memories")
        m = int(counts.max())
        slots = torch.stack([torch.cat([s, s[:1].expand(m - len(s))]) for s in groups])
        x, y = self.get(slots.flatten())
        return x.view(len(buckets), m, *x.shape[1:]), y.view(len(buckets), m), counts

    def counts_by_bucket(self) -> dict[int, int]:
        return dict(self._cached("by_bucket", lambda: self._counts(self.bucket)))

    def counts_by_class(self) -> dict[int, int]:
        return dict(self._cached("by_class", lambda: self._counts(self.y)))

    def _counts(self, values: torch.Tensor) -> dict[int, int]:
        ids, counts = values[: self.size].unique(return_counts=True)
        return dict(zip(ids.tolist(), counts.tolist()))

    def bytes_per_sample(self) -> int:
        sample = 0 if self.x is None else self.x[0].numel() * self.x.element_size()
        return sample + sum(t.element_size() for t in (self.y, self.bucket, self.ids, self.priority))

    def nbytes(self) -> int:
        """Bytes held by the allocated storage (the full capacity, filled or not)."""
        return self.capacity * self.bytes_per_sample()

    def state_dict(self) -> dict:
        n = self.size
        return {
            "capacity": self.limit,
            "x": None if self.x is None else self.x[:n].cpu().clone(),
            "sample_shape": None if self.x is None else tuple(self.x.shape[1:]),
            "dtype": None if self.x is None else str(self.x.dtype).removeprefix("torch."),
            "y": self.y[:n].cpu().clone(),
            "bucket": self.bucket[:n].cpu().clone(),
            "ids": self.ids[:n].cpu().clone(),
            "priority": self.priority[:n].cpu().clone(),
            "pass": None if self._pass is None or self._pass[2] != self.version
            else {"order": self._pass[0].clone(), "position": self._pass[1]},
        }

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.limit:
            raise ValueError(f"checkpoint buffer capacity {state['capacity']} != configured {self.limit}")
        self.x = None
        self.size = 0
        n = len(state["y"])
        self.reserve(n)
        if state["x"] is not None:
            self.x = torch.empty((self.capacity, *state["sample_shape"]), dtype=getattr(torch, state["dtype"]),
                                 device=self.device)
            self.write(torch.arange(n), state["x"], state["y"], state["bucket"], state["priority"], state.get("ids"))
        saved = state.get("pass")  # absent from checkpoints written before replay drew in passes: a new pass
        self._pass = None if saved is None else (saved["order"].clone(), int(saved["position"]), self.version)
