"""A stream through a broker: a producer writes a dataset into a Redis stream, a consumer group feeds
the server. The format and the guarantees are documented in docs/broker.md; in short:

Keys (KEY is the stream's name):
- KEY: the Redis stream. Entries in time order: `train` (one training batch: `bucket`, `x` and `y`
  as .npy bytes), `end_bucket` (`bucket`, and `last`: the id of that bucket's last train entry),
  and one final `end` (the last bucket and train entry id).
- KEY:meta: JSON written before the first entry: the format, the stream_id, the schema, the buckets,
  the schedule it was cut with, and the keys of the held-out sets.
- KEY:heldout:B: a Redis list, bucket B's held-out set in chunks (.npz bytes of x and y).
- KEY:lease:GROUP: the consumer lease of a group (the active consumer's name, with a TTL).

Exactly-once: a train entry's Train sequence is its entry id MS-N as MS * 1_000_000 + N (so ids,
which only grow, give strictly increasing sequences), and an entry is XACKed only once the server
says it is durable: a TrainAck's durable_sequence at or past it, or the OK of its bucket's EndBucket.
So every entry not yet durable is pending in the group; a consumer that starts (after a crash of
itself, of the server or both) claims all pending entries (XAUTOCLAIM) and sends them again in
order before new ones; the server drops those at or below its applied mark as duplicates.

One active consumer per group (standby, not refusal): the consumer that holds the group's lease
feeds the server and renews the lease; another one waits, and takes over (claiming the pending
entries) when the lease lapses. A consumer that loses its lease stops at once.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import socket
import sys
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import grpc
import numpy as np
import torch
from tqdm import tqdm

from cl_engine.streams import Stream
from cl_engine.streams.base import stored_batch

from .api import Batch, Client, Schema, ServerStatus, ServiceError, TrainAck
from .replay import ReplayRefused, Schedule, check_schema, first_contact, resumable, wait_for_server

FORMAT = "clstream-redis-stream/1"
SEQUENCES_PER_MS = 1_000_000  # entry id MS-N → Train sequence MS * 1_000_000 + N
MAX_ENTRY_BYTES = 16 << 20  # a train entry (one batch) at most; the server takes 64 MiB messages by default
HELDOUT_CHUNK_BYTES = 8 << 20
TRAIN, END_BUCKET, END = "train", "end_bucket", "end"


class LeaseLost(RuntimeError):
    """Another consumer took the group's lease: this one must not feed the server any more."""


def entry_sequence(entry_id: str | bytes) -> int:
    """The Train sequence of a stream entry id `MS-N` (MS * 1_000_000 + N)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, n = text.partition("-")
    if int(n) >= SEQUENCES_PER_MS:
        raise ValueError(f"entry id {text}: more than {SEQUENCES_PER_MS} entries in one millisecond cannot map to "
                         "Train sequences; publish with automatic ids (XADD KEY *)")
    return int(ms) * SEQUENCES_PER_MS + int(n)


def keys(key: str) -> dict[str, str]:
    return {"meta": f"{key}:meta", "heldout": f"{key}:heldout:"}


def lease_key(key: str, group: str) -> str:
    return f"{key}:lease:{group}"


def to_npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def from_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def connect_redis(url: str):
    """A redis client for `url` (redis://[:password@]host:port/db, rediss:// for TLS); ValueError names --redis."""
    import redis

    try:
        return redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=10, health_check_interval=10)
    except ValueError as e:
        raise ValueError(f"--redis {url!r}: {e}; expected redis://HOST:PORT[/DB] (rediss:// for TLS)") from None


# -- the producer ----------------------------------------------------------------------------------------

@dataclass
class PublishOptions:
    batch_size: int = 10
    epochs: int = 1
    within_bucket: str = "shuffled"  # order inside a bucket: shuffled | upload-time (cl_engine/schedule.py)
    seed: int = 0  # order of the batches in every pass (`clstream-client stream` takes the learner's seed)
    rate: float | None = None  # samples per second at most, as a live producer; None: as fast as Redis takes them
    replace: bool = False  # delete an existing stream of that name (and its meta, held-out sets) first
    eval_chunk: int = 512
    progress: bool = True


def publish(r, key: str, stream: Stream, options: PublishOptions, dataset: str = "") -> dict:
    """Write `stream` into the Redis stream `key` as a producer would; returns a summary (JSON-able)."""
    o = options
    k = keys(key)
    heldout_keys = [f"{k['heldout']}{b}" for b in range(len(stream))]
    if r.exists(key, k["meta"]):
        if not o.replace:
            raise ValueError(f"--stream {key}: Redis already holds a stream of that name ({r.xlen(key) if r.exists(key) else 0} "
                             "entries); choose another name, or --replace to delete it first")
        r.delete(key, k["meta"], *heldout_keys)
    schedule = Schedule([len(b.train) for b in stream.buckets], o.batch_size, o.epochs, o.seed, o.within_bucket)
    per_sample = 4 * math.prod(stream.input_shape)
    if o.batch_size * per_sample + 1024 > MAX_ENTRY_BYTES:
        raise ValueError(f"--batch-size {o.batch_size}: an entry would hold {o.batch_size * per_sample} bytes of "
                         f"samples; expected at most {MAX_ENTRY_BYTES >> 20} MiB an entry")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", key).strip("-")[:80] or "stream"
    meta = {"format": FORMAT, "stream_id": f"redis-{name}-{uuid.uuid4().hex[:10]}", "name": stream.name,
            "dataset": dataset, "schema": {"class_names": list(stream.class_names),
                                           "input_shape": list(stream.input_shape),
                                           "value_range": list(stream.value_range) if stream.value_range else None},
            "buckets": len(stream), "bucket_sizes": schedule.sizes, "batch_size": o.batch_size, "epochs": o.epochs,
            "seed": o.seed, "within_bucket": o.within_bucket, "batches": schedule.total_batches, "samples": schedule.total_samples,
            "heldout": heldout_keys, "heldout_samples": [len(b.test) for b in stream.buckets]}
    size = max(1, min(o.eval_chunk, HELDOUT_CHUNK_BYTES // per_sample))
    for b, bucket in enumerate(stream.buckets):  # the held-out sets first: a consumer registers them at once
        for start in range(0, len(bucket.test), size):
            x, y = bucket.test.batch(torch.arange(start, min(start + size, len(bucket.test))))
            buffer = io.BytesIO()
            np.savez(buffer, x=x.numpy(), y=y.numpy())
            r.rpush(heldout_keys[b], buffer.getvalue())
    r.set(k["meta"], json.dumps(meta))
    bar = tqdm(total=schedule.total_batches, desc=f"publish {key}", unit="batch", file=sys.stderr,
               disable=not o.progress)
    t0, sent, last = time.perf_counter(), 0, ""
    try:
        for b, bucket in enumerate(stream.buckets):
            for index in schedule.batches(b):
                x, y = stored_batch(bucket.train, index)  # as the replay client sends them: as they arrived
                if o.rate:  # an entry goes out once its last sample's time has come
                    delay = t0 + (sent + len(y)) / o.rate - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                last = r.xadd(key, {"kind": TRAIN, "bucket": b, "x": to_npy(x.numpy()), "y": to_npy(y.numpy()),
                                    "ids": to_npy(index.numpy()), "bucket_batches": schedule.counts[b]})
                sent += len(y)
                bar.update(1)
            r.xadd(key, {"kind": END_BUCKET, "bucket": b, "last": last})
        r.xadd(key, {"kind": END, "bucket": len(stream) - 1, "last": last})
    finally:
        bar.close()
    return {"stream": key, "stream_id": meta["stream_id"], "entries": r.xlen(key), "batches": schedule.total_batches,
            "samples": sent, "buckets": len(stream), "seconds": time.perf_counter() - t0}


# -- the consumer ----------------------------------------------------------------------------------------

@dataclass
class ConsumeOptions:
    consumer: str = ""  # this consumer's name in the group; "" → HOST-PID
    lease: float = 10.0  # seconds a silent consumer keeps the group's lease (renewed every third of it)
    max_in_flight: int = 16
    rate: float | None = None  # samples per second at most
    read_count: int = 32  # entries per XREADGROUP
    follow: bool = False  # keep reading after the end-of-stream marker
    reconnect_timeout: float = 120.0
    max_resumes: int = 100
    durable_retries: int = 4
    progress: bool = True


@dataclass
class Entry:
    id: str
    kind: str
    bucket: int
    fields: dict

    @property
    def sequence(self) -> int:
        return entry_sequence(self.id)

    @property
    def last(self) -> int:
        """The Train sequence of the bucket's (or the stream's) last train entry, on a marker."""
        return entry_sequence(self.fields[b"last"])


@dataclass
class ConsumeResult:
    stream_id: str
    consumer: str
    entries: int = 0  # entries processed (redelivered ones included)
    redelivered: int = 0  # pending entries claimed at the start (of a dead consumer, or of this one's past)
    batches_applied: int = 0
    samples_applied: int = 0
    duplicates: int = 0  # train entries the server acknowledged as already applied
    acked: int = 0  # entries XACKed (each once the server said it is durable)
    buckets_ended: list[int] = field(default_factory=list)
    resumes: int = 0
    durable: bool = False
    finished: str = ""  # "end": the end-of-stream marker; "already": the group had consumed it before
    wall_seconds: float = 0.0
    final_status: ServerStatus | None = None


class Lease:
    """The group's lease in Redis: SET NX PX, renewed by its holder, released on a clean exit."""

    RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
    RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"

    def __init__(self, r, key: str, owner: str, seconds: float, say):
        self.r, self.key, self.owner, self.ms = r, key, owner, max(1, int(seconds * 1000))
        self.say = say
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        """Take the lease, waiting as a standby while another consumer holds it."""
        announced = False
        while not self.r.set(self.key, self.owner, nx=True, px=self.ms):
            holder = self.r.get(self.key)  # even under this consumer's own name: two of them may be running
            if not announced:
                self.say(f"standby: consumer {holder.decode() if holder else '?'} holds the lease ({self.key}); "
                         f"taking over when it lapses (after {self.ms / 1000:g}s without renewal)")
                announced = True
            time.sleep(min(1.0, self.ms / 4000))
        self.renewed_at = time.monotonic()
        self._thread = threading.Thread(target=self._renew, name="clstream-lease", daemon=True)
        self._thread.start()

    def renew(self) -> bool:
        """Extend the lease if it is still this consumer's; False (and `lost` set) when it is not."""
        if not self.r.eval(self.RENEW, 1, self.key, self.owner, self.ms):
            self.lost.set()
            return False
        self.renewed_at = time.monotonic()
        return True

    def _renew(self) -> None:
        while not self._stop.wait(self.ms / 3000):
            try:
                if not self.renew():
                    return
            except Exception:  # noqa: BLE001 - Redis away: the lease holds until its TTL would have run out
                if time.monotonic() > self.renewed_at + self.ms / 1000:
                    self.lost.set()
                    return

    def check(self) -> None:
        """Raise LeaseLost unless the lease is surely this consumer's: renewed within a third of its length,
        or confirmed now (so a consumer that stalled past its lease stops before its next entry)."""
        if not self.lost.is_set() and time.monotonic() - self.renewed_at > self.ms / 3000:
            self.renew()
        if self.lost.is_set():
            raise LeaseLost(f"this consumer ({self.owner}) lost the lease {self.key} (not renewed within "
                            f"{self.ms / 1000:g}s): another consumer may feed the server now, so it stops")

    def release(self) -> None:
        self._stop.set()
        try:
            self.r.eval(self.RELEASE, 1, self.key, self.owner)
        except Exception:  # noqa: BLE001 - it lapses on its own
            pass


class Consumer:
    """Feed the server from a consumer group of a Redis stream, exactly once (see the module's doc)."""

    def __init__(self, client: Client, r, key: str, group: str, options: ConsumeOptions | None = None):
        self.client, self.r, self.key, self.group = client, r, key, group
        self.options = o = options or ConsumeOptions()
        self.name = o.consumer or f"{socket.gethostname()}-{os.getpid()}"
        self._unacked: OrderedDict[str, Entry] = OrderedDict()  # delivered to this consumer, not XACKed: id order
        self._todo: deque[Entry] = deque()
        self._lock = threading.Lock()  # _unacked and _todo: the Train request thread takes, the main thread acks
        self._read_lock = threading.Lock()  # one XREADGROUP at a time, so entries queue in id order
        self._sizes: dict[int, int] = {}
        self._bar: tqdm | None = None
        self._warned_volatile = False

    # -- the job --------------------------------------------------------------------------------

    def run(self) -> ConsumeResult:
        o = self.options
        t0 = time.perf_counter()
        raw = self.r.get(keys(self.key)["meta"])
        if raw is None:
            raise ValueError(f"--stream {self.key}: Redis has no {keys(self.key)['meta']}; expected a stream written "
                             "by `clstream-client publish`")
        self.meta = meta = json.loads(raw)
        if meta.get("format") != FORMAT:
            raise ValueError(f"--stream {self.key}: its meta is of format {meta.get('format')!r}; expected {FORMAT}")
        s = meta["schema"]
        self.schema = Schema(tuple(s["class_names"]), tuple(s["input_shape"]),
                             tuple(s["value_range"]) if s["value_range"] else None)
        self.result = res = ConsumeResult(meta["stream_id"], self.name)
        self._ensure_group()
        self.lease = Lease(self.r, lease_key(self.key, self.group), self.name, o.lease, self._say)
        status = first_contact(self.client)  # before waiting as a standby: a wrong --target fails at once
        self.lease.acquire()
        status = self.client.status()  # after a standby's wait, where the active consumer left the server
        self._bar = tqdm(total=meta["batches"], desc=f"consume {self.key}", unit="batch", file=sys.stderr,
                         disable=not o.progress)
        try:
            self._claim()
            if not self._unacked and not o.follow and self._consumed_to_end():
                res.finished = "already"
                self._say(f"group {self.group} has consumed {self.key} to its end-of-stream marker; nothing to do")
            else:
                failures = 0
                while True:
                    try:
                        self._resume(status)
                        self._pump()
                        break
                    except ServiceError as e:
                        failures += 1
                        if not resumable(e) or failures > o.max_resumes:
                            raise
                        res.resumes += 1
                        self._say(f"server unavailable ({e.code.name}: {e.details[:120]}); waiting up to "
                                  f"{o.reconnect_timeout:g}s to resume")
                        status = wait_for_server(self.client, self.options.reconnect_timeout)
            res.final_status = wait_for_server(self.client, self.options.reconnect_timeout)
        finally:
            self._bar.close()
            self.lease.release()
        res.wall_seconds = time.perf_counter() - t0
        return res

    def _ensure_group(self) -> None:
        import redis

        try:
            self.r.xgroup_create(self.key, self.group, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def _claim(self) -> None:
        """Take every pending entry of the group (a dead consumer's, or this name's before a restart)."""
        cursor, claimed = "0-0", []
        while True:
            cursor, entries, *_ = self.r.xautoclaim(self.key, self.group, self.name, min_idle_time=0,
                                                    start_id=cursor, count=256)
            claimed += [e for e in entries if e[1]]  # a deleted entry comes back without fields
            if cursor in (b"0-0", "0-0"):
                break
        claimed.sort(key=lambda e: entry_sequence(e[0]))
        for raw_id, fields in claimed:
            self._add(raw_id, fields)
        self.result.redelivered = len(claimed)
        if claimed:
            self._say(f"claimed {len(claimed)} pending entries of group {self.group}: sent again first (the server "
                      "answers those it has applied as duplicates)")

    def _consumed_to_end(self) -> bool:
        last = self.r.xrevrange(self.key, count=1)
        if not last or last[0][1].get(b"kind") != END.encode():
            return False
        group = next(g for g in self.r.xinfo_groups(self.key) if g["name"] in (self.group, self.group.encode()))
        return entry_sequence(group["last-delivered-id"]) >= entry_sequence(last[0][0]) and group["pending"] == 0

    def _resume(self, status: ServerStatus) -> None:
        """Check the server holds this stream or nothing, register lost held-out sets, queue the unacked entries."""
        check_schema(status, self.schema, self.client.target)
        sid = self.result.stream_id
        if status.open_bucket > 0 and sid not in status.applied_sequences:
            raise ReplayRefused(
                f"the server at {self.client.target} has ended buckets 0..{status.open_bucket - 1} but never trained "
                f"this stream ({sid}): it was trained on another stream, so this one cannot be fed to it. Use a "
                "server with an empty checkpoint directory")
        for b, heldout in enumerate(self.meta["heldout"]):
            if b not in status.eval_buckets:
                self.client.register_eval_set(b, schema=self.schema, chunks=lambda k=heldout: self._heldout(k),
                                              timeout=max(self.client.timeout, 600.0))
        with self._lock:
            self._todo = deque(self._unacked.values())

    def _heldout(self, key: str):
        for i in range(self.r.llen(key)):
            with np.load(io.BytesIO(self.r.lindex(key, i)), allow_pickle=False) as z:
                yield z["x"], z["y"]

    # -- entries --------------------------------------------------------------------------------

    def _add(self, raw_id, fields: dict) -> Entry:
        entry_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
        kind = fields.get(b"kind", b"").decode()
        if kind not in (TRAIN, END_BUCKET, END):
            raise ValueError(f"--stream {self.key}: entry {entry_id} has kind {kind!r}; expected {TRAIN}, "
                             f"{END_BUCKET} or {END} (written by `clstream-client publish`)")
        entry = Entry(entry_id, kind, int(fields[b"bucket"]), fields)
        with self._lock:
            self._unacked[entry_id] = entry
            self._todo.append(entry)
        return entry

    def _peek(self) -> Entry:
        """The next entry to process: the queued ones first, then new ones from the group (blocking)."""
        while True:
            self.lease.check()
            with self._read_lock:
                with self._lock:
                    if self._todo:
                        return self._todo[0]
                reply = self.r.xreadgroup(self.group, self.name, {self.key: ">"}, count=self.options.read_count,
                                          block=1000)
                for _, entries in reply or []:
                    for raw_id, fields in entries:
                        self._add(raw_id, fields)

    def _take(self, cancelled: threading.Event | None = None) -> Entry | None:
        """Pop the next entry; None when `cancelled` (a Train call that ended must not take one more)."""
        with self._lock:
            if cancelled is not None and cancelled.is_set():
                return None
            self.result.entries += 1
            return self._todo.popleft()

    def _xack(self, up_to: int, markers: tuple[str, ...] = ()) -> None:
        """XACK the train entries at or below sequence `up_to` (durable on the server), and `markers`."""
        with self._lock:
            done = [e.id for e in self._unacked.values() if e.kind == TRAIN and e.sequence <= up_to]
            done += [m for m in markers if m in self._unacked]
            for entry_id in done:
                del self._unacked[entry_id]
        if done:
            self.result.acked += self.r.xack(self.key, self.group, *done)

    def _pump(self) -> None:
        while True:
            entry = self._peek()
            if entry.kind == TRAIN:
                self._train()
            elif entry.kind == END_BUCKET:
                self._end_bucket(entry)
                self._take()
            else:
                end = self._end_bucket(entry)
                self._take()
                self.result.durable = end.durable
                self.result.finished = "end"
                if not self.options.follow:
                    return
                self._say(f"end of stream reached (durable: {end.durable}); following {self.key} for more entries")

    def _train(self) -> None:
        o, res = self.options, self.result
        window = threading.Semaphore(o.max_in_flight) if o.max_in_flight else None
        finished = threading.Event()

        def requests():
            t0, sent = time.perf_counter(), 0
            while True:
                entry = self._peek()
                if entry.kind != TRAIN:
                    return
                while window is not None and not window.acquire(timeout=0.2):
                    if finished.is_set():
                        return
                entry = self._take(cancelled=finished)
                if entry is None:
                    return
                x, y, ids = self._samples(entry)
                if o.rate:
                    delay = t0 + (sent + len(y)) / o.rate - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                self.lease.check()  # again after the waits: a consumer that stalled in them sends nothing more
                sent += len(y)
                self._sizes[entry.sequence] = len(y)
                yield Batch(res.stream_id, entry.sequence, entry.bucket, x, y, sample_ids=ids,
                            bucket_batches=int(entry.fields.get(b"bucket_batches", 0)))

        try:
            for ack in self.client.train(requests(), schema=self.schema):
                if window is not None:
                    window.release()
                self._record(ack)
                self._xack(ack.durable_sequence)
        finally:
            with self._lock:  # from here the request thread takes no entry: a resume re-queues them all
                finished.set()

    def _samples(self, entry: Entry):
        """The entry's batch and its samples' identities (None from a producer that wrote none); its bytes are
        dropped once decoded (held only while unsent: a resend reads the entry from Redis again, where it stays
        until acknowledged)."""
        fields = entry.fields
        if b"x" not in fields:
            found = self.r.xrange(self.key, entry.id, entry.id)
            if not found:
                raise RuntimeError(f"entry {entry.id} of {self.key} was deleted (trimmed?) before the server made it "
                                   "durable: it cannot be sent again. Trim only what every group has acknowledged")
            fields = found[0][1]
        entry.fields = {k: v for k, v in fields.items() if k not in (b"x", b"y", b"ids")}
        ids = from_npy(fields[b"ids"]) if b"ids" in fields else None
        return from_npy(fields[b"x"]), from_npy(fields[b"y"]), ids

    def _record(self, ack: TrainAck) -> None:
        res = self.result
        size = self._sizes.pop(ack.sequence, 0)
        if ack.duplicate:
            res.duplicates += 1
        elif ack.applied:
            res.batches_applied += 1
            res.samples_applied += size
            self._bar.update(1)
        if self._bar.n % 10 == 0:
            self._bar.set_postfix(version=ack.model_version, duplicates=res.duplicates, refresh=False)

    def _end_bucket(self, marker: Entry):
        """EndBucket naming the bucket's last train entry; XACK the bucket's entries and the marker once OK.
        A server that lost some of them (restarted from an older checkpoint) is resumed (ABORTED); one that
        cannot write its checkpoint is asked again `durable_retries` times."""
        sid, last, bucket = self.result.stream_id, marker.last, marker.bucket
        size = self.meta["bucket_sizes"][bucket]
        attempt = 0
        while True:
            self.lease.check()
            try:
                end = self.client.end_bucket(bucket, bucket_size=size, timeout=max(self.client.timeout, 600.0),
                                             retry=None, expected_sequences={sid: last})
                break
            except ServiceError as e:
                if e.code != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                mark = wait_for_server(self.client, self.options.reconnect_timeout).applied_sequences.get(sid, 0)
                if mark < last:
                    raise ServiceError(grpc.StatusCode.ABORTED, f"the server's applied mark is {mark}, below the "
                                       f"bucket's last entry {last} ({e.details})", "EndBucket") from None
                if not e.details.startswith("not durable") or attempt == self.options.durable_retries:
                    raise
                self._say(f"bucket {bucket} is not durable on the server yet ({e.details[:200]}); asking again in "
                          f"{2 ** attempt}s")
                time.sleep(2 ** attempt)
                attempt += 1
        if not end.durable and not self._warned_volatile:
            self._warned_volatile = True
            self._say("the server keeps no checkpoints: entries are acknowledged at their bucket's end, and a server "
                      "crash loses what it learned (start it with --checkpoint-dir)")
        self._xack(last, markers=(marker.id,))
        if marker.kind == END_BUCKET and bucket not in self.result.buckets_ended:
            self.result.buckets_ended.append(bucket)
            if not end.already_ended:
                self._say(f"bucket {bucket + 1}/{self.meta['buckets']} ended: held-out accuracy "
                          + " ".join("-" if math.isnan(a) else f"{a:.3f}" for a in end.row)
                          + f"; model version {end.model_version}")
        return end

    def _say(self, message: str) -> None:
        if self.options.progress:
            tqdm.write(message, file=sys.stderr)
