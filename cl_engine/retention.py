"""What enters the replay memory, and what leaves it when it is full.

- `ReservoirRetention` (fixed total capacity): every observed sample has the same chance to be
  held (Vitter's reservoir). Class-balanced, a full memory makes room by dropping a random sample
  of its largest class, so rare classes are not crowded out (CBRS, Chrysakis & Moens 2020).
  Deferred ("reservoir-end"), the same reservoir's writes wait until the end of their bucket, so a
  bucket replays only finished buckets, as Avalanche's ReservoirSamplingBuffer does; once a bucket
  ends the memory holds exactly what the online reservoir would.
- `BucketRetention` (the seed study's way, and GEM's per-bucket memory): during a bucket, a
  bounded reservoir of candidates is kept; at the end of the bucket they are scored with the
  model as it stands and the k of highest priority are retained, k = ratio × bucket size or a
  fixed count per bucket (`asked`, per bucket). An unbounded memory grows to hold every bucket's
  k; a bounded one that is full makes room evenly: the largest bucket gives up its
  lowest-priority samples first, so every bucket keeps a fair share (`cut_warning` says so).

Both are offered each sample of a bucket once, however many epochs the bucket is trained for:
a sample whose identity (buffer.py's `ids`) was offered earlier in the bucket is not offered
again, so no sample ever takes two places in the memory.
"""
from __future__ import annotations

from typing import Callable

import torch

from .buffer import ReplayBuffer, content_ids
from .selection import priority

Scorer = Callable[[torch.Tensor], torch.Tensor]


def reservoir_slots(seen: int, n: int, capacity: int, size: int, generator: torch.Generator) -> list[int]:
    """For n arrivals after `seen` earlier ones: the slot each takes (-1: not kept).

    Arrivals first fill the free slots; after that, arrival number k (counting from 1 over the
    whole stream) draws j uniformly from 0..k-1 and replaces slot j if j < capacity (Vitter's
    algorithm R). j = floor(u·k) for one float64 uniform u per arrival, drawn for the whole batch
    in one call: the same numbers as one draw per arrival, so the slots do not depend on how the
    arrivals are batched."""
    fill = max(0, min(n, capacity - size))
    slots = list(range(size, size + fill))
    if n > fill:
        first = seen + fill + 1  # k of the first arrival that finds the memory full
        for i, u in enumerate(torch.rand(n - fill, generator=generator, dtype=torch.float64).tolist()):
            j = int(u * (first + i))
            slots.append(j if j < capacity else -1)
    return slots


def last_writes(slots: list[int]) -> list[int]:
    """Positions in `slots` (-1 = none) that are the last write to their slot, in order."""
    keep, written = [], set()
    for i in range(len(slots) - 1, -1, -1):
        if slots[i] >= 0 and slots[i] not in written:
            keep.append(i)
            written.add(slots[i])
    return keep[::-1]


def store(buffer: ReplayBuffer, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, bucket: int,
          slots: list[int]) -> None:
    """Arrival i into slots[i] (-1: not kept; a slot written twice keeps the later arrival). Arrivals
    that all go to the next free slots, as while a memory fills, are appended by slice copies."""
    if slots == list(range(buffer.size, buffer.size + len(slots))):
        buffer.append(x, y, bucket, ids=ids)
        return
    keep = last_writes(slots)
    if keep:
        index, target = torch.tensor([keep, [slots[i] for i in keep]])
        buffer.write(target, x.index_select(0, index.to(x.device)), y.index_select(0, index.to(y.device)), bucket,
                     ids=ids.index_select(0, index.to(ids.device)))


def asked_per_bucket(retention: str, sizes: list[int], ratio: float, per_bucket: int) -> list[int]:
    """The memories each bucket of `sizes` samples asks for under ratio or per-bucket retention."""
    if retention == "per-bucket":
        return [per_bucket] * len(sizes)
    return [max(1, round(ratio * n)) for n in sizes]


def cut_warning(asked: list[int], capacity: int | None) -> str | None:
    """What a capacity takes from the buckets' asked memories, in one sentence; None when nothing."""
    if capacity is None or sum(asked) <= capacity:
        return None
    total, first_cut = 0, 0
    for b, k in enumerate(asked):
        total += k
        if total > capacity:
            first_cut = b
            break
    return (f"buffer capacity {capacity} holds fewer memories than the {sum(asked)} asked ({asked[0]} a bucket"
            f"{'' if len(set(asked)) == 1 else ' or so'}): from bucket {first_cut} on, every bucket's share is cut "
            "to fit; leave the capacity out to keep them all (kept vs asked per bucket: the report's buffer)")


def memory_cut_warning(config: dict, sizes: list[int]) -> str | None:
    """For a learner configuration (LearnerConfig.model_dump(), or the server's effective one) and the
    sizes of the buckets to come: the sentence announcing that the memory will keep less than asked."""
    if config.get("strategy") == "naive" or config.get("retention") not in ("ratio", "per-bucket"):
        return None
    asked = asked_per_bucket(config["retention"], sizes, config["retain_ratio"], config["memory_per_bucket"])
    if max(asked, default=0) > config["candidate_pool"]:
        return (f"candidate pool {config['candidate_pool']} is smaller than the {max(asked)} memories a bucket asks "
                "for: such buckets keep at most the pool; raise --candidate-pool")
    return cut_warning(asked, config.get("buffer_capacity"))


class FirstOffers:
    """The identities offered to a memory in the open bucket, so each sample is offered once per bucket."""

    def __init__(self):
        self.offered: set[int] = set()

    def new(self, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor | None):
        """(x, y, ids) of the samples not offered before in this bucket (ids None: from the contents)."""
        ids = content_ids(x) if ids is None else ids.to(torch.int64)
        fresh = []
        for i, sample in enumerate(ids.tolist()):
            if sample not in self.offered:
                self.offered.add(sample)
                fresh.append(i)
        if len(fresh) == len(ids):
            return x, y, ids
        index = torch.tensor(fresh, dtype=torch.int64)
        return x[index.to(x.device)], y[index.to(y.device)], ids[index.to(ids.device)]

    def clear(self) -> None:
        self.offered.clear()

    def state_dict(self) -> list[int]:
        return sorted(self.offered)

    def load_state_dict(self, state: list[int] | None) -> None:
        self.offered = set(state or [])


def balanced_quota(group_sizes: dict[int, int], capacity: int) -> dict[int, int]:
    """How many samples each group keeps so that the total fits `capacity` as evenly as possible.

    Water-filling: every group keeps min(size, L) for the largest level L that fits; the few
    places left over go to the newest of the groups that were cut.
    """
    if sum(group_sizes.values()) <= capacity:
        return dict(group_sizes)
    fits = lambda level: sum(min(n, level) for n in group_sizes.values()) <= capacity  # noqa: E731
    low, high = 0, max(group_sizes.values())  # fits(low) holds, fits(high) does not
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    level = low
    quota = {g: min(n, level) for g, n in group_sizes.items()}
    spare = capacity - sum(quota.values())
    for g in sorted((g for g, n in group_sizes.items() if n > level), reverse=True)[:spare]:
        quota[g] += 1
    return quota


class ReservoirRetention:
    def __init__(self, buffer: ReplayBuffer, class_balanced: bool = False, deferred: bool = False):
        if class_balanced and deferred:
            raise ValueError("a class-balanced reservoir evicts by the memory's current classes, online only; "
                             "it cannot be deferred to the end of the bucket")
        self.buffer = buffer
        self.class_balanced = class_balanced
        self.deferred = deferred
        self.seen = 0
        self.seen_per_class: dict[int, int] = {}
        self.pending: set[int] = set()  # deferred: the slots written at the bucket's end
        self._staged: list[torch.Tensor] | None = None  # deferred: their x, y, ids, row = slot (capacity rows)
        self.offers = FirstOffers()

    def observe(self, x: torch.Tensor, y: torch.Tensor, bucket: int, generator: torch.Generator,
                ids: torch.Tensor | None = None) -> None:
        buf = self.buffer
        if buf.capacity == 0:
            return
        x, y, ids = self.offers.new(x, y, ids)
        if len(y) == 0:
            return
        if self.class_balanced:
            slots = self._class_balanced_slots(y, generator)
        else:
            # deferred: the size the memory will have once the pending writes land
            size = max(buf.size, max(self.pending, default=-1) + 1)
            slots = reservoir_slots(self.seen, len(y), buf.capacity, size, generator)
        self.seen += len(y)
        if not self.deferred:
            store(buf, x, y, ids, bucket, slots)
            return
        keep = last_writes(slots)
        if keep:
            self._stage(x, y, ids, keep, [slots[i] for i in keep])

    def _stage(self, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, rows: list[int], slots: list[int]) -> None:
        """Arrivals `rows` become the pending writes of `slots`: one indexed copy per tensor into staging
        tensors of the memory's capacity, allocated at the first write (a later write to a slot wins)."""
        if self._staged is None:
            self._staged = [torch.empty((self.buffer.capacity, *t.shape[1:]), dtype=t.dtype, device=t.device)
                            for t in (x, y, ids)]
        index, target = torch.tensor([rows, slots])  # as store() does: one index tensor for every copy
        for staged, t in zip(self._staged, (x, y, ids)):
            staged[target.to(staged.device)] = t.index_select(0, index.to(t.device)).to(staged.device, staged.dtype)
        self.pending.update(slots)

    def _class_balanced_slots(self, y: torch.Tensor, generator: torch.Generator) -> list[int]:
        buf = self.buffer
        labels = buf.y[: buf.size].cpu().clone()
        slots = torch.full((len(y),), -1, dtype=torch.int64)
        size = buf.size
        for i, c in enumerate(y.tolist()):
            self.seen_per_class[c] = self.seen_per_class.get(c, 0) + 1
            if size < buf.capacity:
                slots[i], size = size, size + 1
                labels = torch.cat([labels, torch.tensor([c])])
                continue
            counts = torch.bincount(labels, minlength=c + 1)
            largest = counts.max()
            if counts[c] < largest:  # c is not a largest class: evict from a largest one
                victim_class = int(torch.nonzero(counts == largest).flatten()[
                    torch.randint(int((counts == largest).sum()), (1,), generator=generator)])
            elif torch.rand(1, generator=generator) < counts[c] / self.seen_per_class[c]:
                victim_class = c
            else:
                continue
            members = torch.nonzero(labels == victim_class).flatten()
            slot = int(members[torch.randint(len(members), (1,), generator=generator)])
            slots[i] = slot
            labels[slot] = c
        return slots.tolist()

    def end_bucket(self, bucket: int, scorer: Scorer, selection: str, generator: torch.Generator,
                   bucket_size: int | None = None) -> None:
        """Online: nothing to consolidate. Deferred: the bucket's writes land now."""
        self.offers.clear()
        if self.pending:
            slots, x, y, ids = self._pending_rows()
            self.buffer.write(slots, x, y, bucket, ids=ids)
            self.pending.clear()

    def _pending_rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The pending writes as (slots, x, y, ids), slots ascending."""
        slots = torch.tensor(sorted(self.pending))
        return (slots, *(t[slots.to(t.device)] for t in self._staged))

    def state_dict(self) -> dict:
        pending = None
        if self.pending:
            slots, x, y, ids = self._pending_rows()
            pending = {"slots": slots, "x": x.cpu(), "y": y.cpu(), "ids": ids.cpu()}
        return {"seen": self.seen, "seen_per_class": dict(self.seen_per_class), "pending": pending,
                "offered": self.offers.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.seen = state["seen"]
        self.seen_per_class = dict(state["seen_per_class"])
        self.offers.load_state_dict(state.get("offered"))
        self.pending = set()
        pending = state.get("pending")  # absent from checkpoints written before deferred reservoirs
        if pending is not None:
            device = self.buffer.device
            ids = pending.get("ids", content_ids(pending["x"]))
            slots = pending["slots"].tolist()
            self._stage(pending["x"].to(device), pending["y"].to(device), ids.to(device), list(range(len(slots))),
                        slots)


class BucketRetention:
    def __init__(self, buffer: ReplayBuffer, pool_size: int, ratio: float | None = None,
                 per_bucket: int | None = None):
        if (ratio is None) == (per_bucket is None):
            raise ValueError("bucket retention needs exactly one of a ratio or a per-bucket count")
        if ratio is not None and not 0 < ratio <= 1:
            raise ValueError(f"retain ratio must be in (0, 1], got {ratio}")
        self.buffer = buffer
        self.ratio = ratio
        self.per_bucket = per_bucket
        self.pool = ReplayBuffer(pool_size, buffer.device)
        self.pool_seen = 0  # distinct samples observed in the current bucket
        self.offers = FirstOffers()
        self.asked: dict[int, int] = {}  # bucket -> memories its retention asked for (kept: the buffer's counts)

    def observe(self, x: torch.Tensor, y: torch.Tensor, bucket: int, generator: torch.Generator,
                ids: torch.Tensor | None = None) -> None:
        x, y, ids = self.offers.new(x, y, ids)
        if len(y) == 0:
            return
        slots = reservoir_slots(self.pool_seen, len(y), self.pool.capacity, self.pool.size, generator)
        self.pool_seen += len(y)
        store(self.pool, x, y, ids, bucket, slots)

    def quota(self, bucket_size: int) -> int:
        if self.per_bucket is not None:
            return self.per_bucket
        return max(1, round(self.ratio * bucket_size))

    def end_bucket(self, bucket: int, scorer: Scorer, selection: str, generator: torch.Generator,
                   bucket_size: int | None = None) -> None:
        """Retain the bucket's k highest-priority candidates, then fit the memory to its capacity (a
        bounded memory) or grow it to hold them (an unbounded one).

        `bucket_size` is the number of distinct samples in the bucket; it defaults to the number of
        distinct samples observed (the pool is offered each sample once, whatever the epochs).
        """
        pool, buf = self.pool, self.buffer
        n_bucket = bucket_size if bucket_size is not None else self.pool_seen
        self.pool_seen = 0
        self.offers.clear()
        if pool.size == 0 or buf.limit == 0:
            pool.size = 0
            return
        self.asked[bucket] = self.quota(n_bucket)
        slots = torch.arange(pool.size, device=pool.device)
        x, y = pool.get(slots)
        ids = pool.ids[: pool.size].clone()
        # random selection never reads the scores: no forward pass over the candidates (same draws, same picks)
        scores = priority(selection, None if selection == "random" else scorer(x), y, generator)
        k = min(self.asked[bucket], len(y))
        chosen = torch.argsort(scores, descending=True, stable=True)[:k]
        pool.size = 0

        sizes = buf.counts_by_bucket()
        sizes[bucket] = sizes.get(bucket, 0) + k
        quota = balanced_quota(sizes, buf.limit if buf.bounded else sum(sizes.values()))
        keep = [self._top_slots(b, q) for b, q in quota.items() if b != bucket]
        kept = torch.cat(keep) if keep else torch.empty(0, dtype=torch.int64, device=buf.device)
        buf.keep(kept)
        take = chosen[: quota[bucket]]
        buf.reserve(buf.size + len(take))
        buf.write(torch.arange(buf.size, buf.size + len(take)), x[take], y[take], bucket, scores[take], ids[take])

    def _top_slots(self, bucket: int, n: int) -> torch.Tensor:
        slots = self.buffer.slots(torch.tensor([bucket]))
        order = torch.argsort(self.buffer.priority[slots], descending=True, stable=True)
        return torch.sort(slots[order[:n]]).values

    def state_dict(self) -> dict:
        return {"pool": self.pool.state_dict(), "pool_seen": self.pool_seen, "offered": self.offers.state_dict(),
                "asked": dict(self.asked)}

    def load_state_dict(self, state: dict) -> None:
        self.pool.load_state_dict(state["pool"])
        self.pool_seen = state["pool_seen"]
        self.offers.load_state_dict(state.get("offered"))
        self.asked = dict(state.get("asked", {}))
