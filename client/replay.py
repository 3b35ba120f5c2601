"""Play a dataset back to a live server as a time-ordered stream, bucket by bucket.

The batches are exactly those of the in-process reference (`python -m cl_engine run`): the same
`cl_engine.schedule.bucket_batches(n, batch_size, epochs, seed, bucket)` index order and the same
samples, as the stream stores them (`stored_batch`: an image stream's uint8 pixels, which the
server's learner normalises and augments itself), each with its index in the bucket as its
sample id, so the server's memory is offered each sample once however many epochs. Every bucket's held-out set is registered before the
first batch, so the row before training and the forward-transfer entries are measured too. With
the server's learner configured as the in-process one, the accuracy matrix is the same.

Sequence numbers are positions in that schedule: bucket b's k-th batch is sequence
`first[b] + k`, first[0] = 1. So when a Train stream breaks (the server died, restarted, shut
down, or shed load), the client waits for the server, reads the stream's applied sequence and the
open bucket from GetStatus, re-registers any held-out set the server lost, and continues from the
next batch. The server drops anything at or below its applied mark, so nothing is trained twice,
and nothing is skipped: a server that comes back from an older checkpoint simply gets the batches
it lost again. EndBucket is called only when every batch of the bucket is acknowledged, and it
names the bucket's last sequence (expected_sequences): a server that restarted from an older
checkpoint in between refuses it (FAILED_PRECONDITION) and the client resends from the server's mark.

"Done" means durable: EndBucket's OK says the bucket is in an fsynced checkpoint, and the replay
succeeds only after the last bucket's EndBucket said so (`ReplayResult.durable`; False only for a
server without checkpoints). A server that cannot write its checkpoint gets `durable_retries` more
EndBucket calls with back-off, then the replay fails with the server's "not durable" message. A
server whose schema differs from the stream's, or that has ended buckets this stream has not
trained (another dataset or schedule was sent to it), is refused at once (ReplayRefused): resuming
there would train nothing and report the other stream's results.

Every `query_every` batches, just before a batch goes out, the client asks the server to predict
a sample of that batch and the ones after it (data the model has not trained on yet) and records
the served accuracy, the answering model version, the latency, and how many batches the answering
model lags behind the data sent so far (`lag_batches`: batches sent but not yet trained). The
queries carry the true labels, so the server's served-accuracy metric counts them too (it scores
with them, and never trains on them). The client keeps at most `max_in_flight` batches
unacknowledged, as a live producer that does not flood the server's queue would, so the served
model trails the traffic by about that many.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import grpc
import numpy as np
import torch
from tqdm import tqdm

from cl_engine.retention import memory_cut_warning
from cl_engine.schedule import batches_per_bucket, bucket_batches, check_within
from cl_engine.streams import Stream, stored_batch, stored_files

from .api import Batch, BucketResult, Client, RetryPolicy, Schema, ServerStatus, ServiceError, TrainAck

# Failures after which the stream is resumed from the server's status rather than given up:
# the server is away (restarting, shutting down) or its training queue stayed full. A message over
# the size limit is RESOURCE_EXHAUSTED too, but sending it again cannot help.
RESUMABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED})


class ReplayRefused(RuntimeError):
    """The server holds another stream's state: replaying this stream there would be a silent no-op."""


def resumable(error: ServiceError) -> bool:
    return error.code in RESUMABLE or (error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "queue" in error.details)


@dataclass
class ReplayOptions:
    batch_size: int = 10
    epochs: int = 1  # passes over each bucket
    within_bucket: str = "shuffled"  # order inside a bucket: shuffled | upload-time (cl_engine/schedule.py)
    seed: int | None = None  # order of the passes after the first; None: the server's learner seed
    rate: float | None = None  # samples per second at most; None: as fast as the server takes them
    max_in_flight: int = 16  # batches sent and not yet acknowledged, at most (0: as many as gRPC buffers)
    query_every: int = 10  # batches between two prediction queries; 0: none
    query_size: int = 32  # samples per query
    stream_id: str | None = None  # None: derived from the stream and the schedule, so a rerun resumes
    eval_chunk: int = 512  # samples per held-out-set message, at most (and ~8 MiB)
    reconnect_timeout: float = 120.0  # how long to wait for a server that went away
    max_resumes: int = 100
    durable_retries: int = 4  # further EndBucket calls (1, 2, 4, 8 s apart) while the server cannot checkpoint
    send_files: bool = False  # training images as their files' bytes (no re-encode), decoded by the server
    progress: bool = True


class Schedule:
    """The batches of every bucket and the sequence number of each (a function of position only)."""

    def __init__(self, sizes: list[int], batch_size: int, epochs: int, seed: int, within: str = "shuffled"):
        if batch_size < 1 or epochs < 1:
            raise ValueError(f"batch size and epochs must be >= 1, got {batch_size} and {epochs}")
        self.sizes, self.batch_size, self.epochs, self.seed = list(sizes), batch_size, epochs, seed
        self.within = within
        self.counts = [batches_per_bucket(n, batch_size, epochs) for n in self.sizes]
        self.first = [1 + sum(self.counts[:b]) for b in range(len(self.sizes))]
        self._start_samples = [epochs * sum(self.sizes[:b]) for b in range(len(self.sizes))]
        self._cache: tuple[int, list[torch.Tensor], np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def total_batches(self) -> int:
        return sum(self.counts)

    @property
    def total_samples(self) -> int:
        return self.epochs * sum(self.sizes)

    def last(self, bucket: int) -> int:
        return self.first[bucket] + self.counts[bucket] - 1

    def batches(self, bucket: int) -> list[torch.Tensor]:
        return self._bucket(bucket)[0]

    def samples_before(self, bucket: int, k: int) -> int:
        """Samples the schedule feeds before batch k of `bucket`."""
        return self._start_samples[bucket] + int(self._bucket(bucket)[1][k])

    def _bucket(self, bucket: int) -> tuple[list[torch.Tensor], np.ndarray]:
        cache = self._cache  # one bucket at a time; read once, as the request thread uses it too
        if cache is None or cache[0] != bucket:
            batches = list(bucket_batches(self.sizes[bucket], self.batch_size, self.epochs, self.seed, bucket,
                                          self.within))
            offsets = np.concatenate([[0], np.cumsum([len(i) for i in batches])])
            cache = self._cache = (bucket, batches, offsets)
        return cache[1], cache[2]


def first_contact(client: Client) -> ServerStatus:
    """The server's status with the client's own retries (seconds): the reconnect budget is for a server
    that was there, not for one that never answered."""
    try:
        return client.status()
    except ServiceError as e:
        if e.code != grpc.StatusCode.UNAVAILABLE:
            raise
        raise ServiceError(e.code, f"no server answers at {client.target} ({e.details}); start one, or "
                                   "check --target", e.method) from None


def wait_for_server(client: Client, reconnect_timeout: float) -> ServerStatus:
    """The server's status, waiting up to `reconnect_timeout` seconds for a server that went away."""
    patient = RetryPolicy(attempts=1_000_000, initial_backoff=0.2, max_backoff=2.0, deadline=reconnect_timeout)
    return client.status(retry=patient)


def check_schema(status: ServerStatus, schema: Schema, target: str) -> None:
    """ReplayRefused when the server holds a model of another schema (classes or input shape; the value
    range is the server's to check)."""
    theirs = Schema(tuple(status.schema["class_names"]), tuple(status.schema["input_shape"]))
    ours = Schema(schema.class_names, schema.input_shape)
    if status.has_model and theirs != ours:
        raise ReplayRefused(
            f"the server at {target} holds a model of another schema: "
            f"{len(theirs.class_names)} classes {list(theirs.class_names)}, input {list(theirs.input_shape)}; "
            f"this stream has {len(schema.class_names)} classes {list(schema.class_names)}, input "
            f"{list(schema.input_shape)}. Use a server with an empty checkpoint directory for it")


def default_stream_id(stream: Stream, batch_size: int, epochs: int, seed: int, within: str = "shuffled") -> str:
    """Stable for the same stream and schedule, so running the same command again resumes it."""
    key = json.dumps({"stream": stream.summary(), "batch_size": batch_size, "epochs": epochs, "seed": seed,
                      "within_bucket": within}, sort_keys=True, default=str)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stream.name).strip("-")[:80] or "stream"
    return f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


@dataclass
class ReplayResult:
    """Everything the replay saw; client.report turns it into the report and the figures."""

    stream: Stream
    options: ReplayOptions
    seed: int
    stream_id: str
    target: str
    schedule: Schedule
    acks: dict[int, dict] = field(default_factory=dict)  # sequence → the ack of its last application
    queries: list[dict] = field(default_factory=list)
    query_failures: list[dict] = field(default_factory=list)
    bucket_ends: list[dict] = field(default_factory=list)
    resumes: list[dict] = field(default_factory=list)
    duplicates: int = 0  # acks that said "already applied"
    samples_applied: int = 0  # samples the server trained for this client during the replay (re-sent included)
    retrained: int = 0  # batches applied again because the server came back from an older checkpoint
    skipped_buckets: list[int] = field(default_factory=list)  # already ended on the server when we came
    train_seconds: float = 0.0  # wall time of Train streams
    end_bucket_seconds: float = 0.0  # wall time of EndBucket calls (consolidation + held-out evaluation)
    register_seconds: float = 0.0
    wall_seconds: float = 0.0
    final_status: ServerStatus | None = None
    durable: bool = False  # the final state is in an fsynced checkpoint (False only without server checkpoints)
    final_checkpoint: str = ""
    cut_warning: str | None = None  # the server's memory keeps less than its retention asks (announced at start)


class Replay:
    def __init__(self, client: Client, stream: Stream, options: ReplayOptions | None = None,
                 on_ack: Callable[[TrainAck], None] | None = None):
        self.client = client
        self.stream = stream
        self.options = options or ReplayOptions()
        self.on_ack = on_ack
        self.schema = Schema(tuple(stream.class_names), tuple(stream.input_shape), stream.value_range)
        self._applied = 0
        self._version_offset = 0
        self._recent = deque(maxlen=50)  # prequential accuracies of the last acks, for the progress bar
        self._bars: dict[str, tqdm] = {}
        self._sizes: dict[int, int] = {}  # sequence → samples, for batches sent and not yet acknowledged

    # -- the job --------------------------------------------------------------------------------

    def run(self) -> ReplayResult:
        o = self.options
        t_start = time.perf_counter()
        if o.send_files and stored_files(self.stream.buckets[0].train, torch.zeros(1, dtype=torch.long)) is None:
            raise ValueError(f"send_files: the stream {self.stream.name} is not made of image files; send its "
                             "samples as tensors (only image streams, e.g. CLEAR in images mode, have files)")
        status = first_contact(self.client)
        self._check_schema(status)
        seed = o.seed if o.seed is not None else int(status.config.get("seed", 0))
        check_within(o.within_bucket, self.stream.name, self.stream.undated_samples)
        schedule = Schedule([len(b.train) for b in self.stream.buckets], o.batch_size, o.epochs, seed,
                            o.within_bucket)
        stream_id = o.stream_id or default_stream_id(self.stream, o.batch_size, o.epochs, seed, o.within_bucket)
        self.result = r = ReplayResult(self.stream, o, seed, stream_id, self.client.target, schedule)
        r.cut_warning = memory_cut_warning(status.config, schedule.sizes) if status.config else None
        if r.cut_warning:
            print(f"warning: the server's {r.cut_warning}", file=sys.stderr)
        wanted = dict(self.stream.learner_defaults)
        if o.send_files:  # the server decodes them as the stream does (ImageSet.stored) only with this
            wanted["image_transform"] = "imagenet"
        differ = {k: v for k, v in wanted.items() if status.config.get(k, v) != v}
        if differ:
            print("warning: this stream's training samples want the server's learner to run with "
                  + ", ".join(f"{k}={v} (it has {status.config.get(k)})" for k, v in differ.items())
                  + "; start it with " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in differ.items()),
                  file=sys.stderr)
        n = len(self.stream)
        self._bars["buckets"] = tqdm(total=n, desc="buckets", unit="bucket", file=sys.stderr, disable=not o.progress,
                                     position=0)
        bucket: int | None = None  # None: ask the server where to continue
        resume: dict | None = None  # the resume in progress, if any
        failures = 0
        try:
            while True:
                try:
                    if bucket is None:
                        bucket = self._resume_point(status)
                        if resume is not None:
                            resume.update(open_bucket=bucket, applied_sequence=self._applied)
                            r.resumes.append(resume)
                            self._say(f"resumed: bucket {bucket}, after sequence {self._applied} ("
                                      f"{max(0, resume['acknowledged_sequence'] - self._applied)} acknowledged "
                                      "batches to send again)")
                            resume = None
                    if bucket >= n:
                        break
                    self._play_bucket(bucket)
                    bucket += 1
                except ServiceError as e:
                    failures += 1
                    if not resumable(e) or failures > o.max_resumes:
                        raise
                    if resume is None:
                        resume = {"time": time.perf_counter() - t_start, "error": e.code.name,
                                  "acknowledged_sequence": self._applied}
                    self._say(f"server unavailable ({e.code.name}: {e.details[:120]}); waiting up to "
                              f"{o.reconnect_timeout:g}s to resume")
                    status = wait_for_server(self.client, self.options.reconnect_timeout)
                    bucket = None
            self._confirm_durable()
        finally:
            for bar in self._bars.values():
                bar.close()
        r.final_status = wait_for_server(self.client, self.options.reconnect_timeout)
        r.wall_seconds = time.perf_counter() - t_start
        return r

    def _resume_point(self, status: ServerStatus) -> int:
        """Re-register lost held-out sets; return the bucket to continue with, and note the applied mark."""
        r = self.result
        self._applied = status.applied_sequences.get(r.stream_id, 0)
        ended = min(status.open_bucket, len(self.stream))
        if ended and self._applied < r.schedule.last(ended - 1):
            raise ReplayRefused(
                f"the server at {r.target} has ended buckets 0..{ended - 1}, but applied only "
                f"{self._applied} of this stream's batches (stream_id {r.stream_id}; bucket {ended - 1} ends at "
                f"sequence {r.schedule.last(ended - 1)}): it was trained on another dataset, order or schedule, "
                "so this stream cannot be replayed there. Use a server with an empty checkpoint directory, or "
                "repeat the command that trained it")
        t0 = time.perf_counter()
        for j, bucket in enumerate(self.stream.buckets):
            if j not in status.eval_buckets:
                self.client.register_eval_set(j, schema=self.schema, chunks=self._eval_chunks(bucket.test),
                                              timeout=max(self.client.timeout, 600.0))
        r.register_seconds += time.perf_counter() - t0
        # Model versions count applied batches; with this stream the server's only trainer,
        # version - offset is the number of this stream's batches the model has learned from.
        self._version_offset = status.model_version - self._applied
        open_bucket = min(status.open_bucket, len(self.stream))
        for b in range(open_bucket):
            if b not in r.skipped_buckets and not any(e["bucket"] == b for e in r.bucket_ends):
                r.skipped_buckets.append(b)
        self._bars["buckets"].n = open_bucket
        self._bars["buckets"].refresh()
        return open_bucket

    def _check_schema(self, status: ServerStatus) -> None:
        check_schema(status, self.schema, self.client.target)

    def _end_bucket(self, bucket: int) -> BucketResult:
        """EndBucket naming the bucket's last sequence. A server that lost batches of it (restarted from
        an older checkpoint) is resumed from its mark (ABORTED, resumable); one that cannot write its
        checkpoint is asked again `durable_retries` times, then its "not durable" error is raised."""
        r, o = self.result, self.options
        last = r.schedule.last(bucket)
        attempt = 0
        while True:
            try:
                return self.client.end_bucket(bucket, bucket_size=len(self.stream.buckets[bucket].train),
                                              timeout=max(self.client.timeout, 600.0), retry=None,
                                              expected_sequences={r.stream_id: last})
            except ServiceError as e:
                if e.code != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                mark = wait_for_server(self.client, self.options.reconnect_timeout).applied_sequences.get(r.stream_id, 0)
                if mark < last:
                    raise ServiceError(grpc.StatusCode.ABORTED, f"the server's applied mark is {mark}, below the "
                                       f"bucket's last sequence {last} ({e.details})", "EndBucket") from None
                if not e.details.startswith("not durable") or attempt == o.durable_retries:
                    raise
                self._say(f"bucket {bucket} is not durable on the server yet ({e.details[:200]}); asking again in "
                          f"{2 ** attempt}s")
                time.sleep(2 ** attempt)
                attempt += 1

    def _confirm_durable(self) -> None:
        """The last bucket's end is durable: said by its EndBucket, or asked again when it ended earlier."""
        r, last = self.result, len(self.stream) - 1
        end = next((e for e in r.bucket_ends if e["bucket"] == last), None)
        if end is None:
            result = self._end_bucket(last)
            end = {"durable": result.durable, "checkpoint": result.checkpoint}
        r.durable, r.final_checkpoint = end["durable"], end["checkpoint"]

    def _eval_chunks(self, test):
        """A held-out set in pieces of at most eval_chunk samples and ~8 MiB (decoded images are big)."""
        per_sample = 4 * math.prod(self.stream.input_shape)
        size = max(1, min(self.options.eval_chunk, (8 << 20) // per_sample))

        def chunks():
            for start in range(0, len(test), size):
                yield test.batch(torch.arange(start, min(start + size, len(test))))
        return chunks

    def _play_bucket(self, bucket: int) -> None:
        r, o = self.result, self.options
        schedule = r.schedule
        start = max(0, self._applied - schedule.first[bucket] + 1)
        if start < schedule.counts[bucket]:
            self._train(bucket, start)
        t0 = time.perf_counter()
        end = self._end_bucket(bucket)
        seconds = time.perf_counter() - t0
        r.end_bucket_seconds += seconds
        buffer = self.client.status().buffer
        r.bucket_ends.append({"bucket": bucket, "row": end.row, "metrics": end.metrics,
                              "model_version": end.model_version, "already_ended": end.already_ended,
                              "durable": end.durable, "checkpoint": end.checkpoint,
                              "samples": schedule.samples_before(bucket, 0) + o.epochs * schedule.sizes[bucket],
                              "seconds": seconds, "buffer_by_bucket": buffer["by_bucket"],
                              "buffer_by_class": buffer["by_class"], "buffer_size": buffer["size"]})
        self._bars["buckets"].update(1)
        self._say(f"bucket {bucket + 1}/{len(self.stream)} ended: held-out accuracy "
                  + " ".join("-" if math.isnan(a) else f"{a:.3f}" for a in end.row)
                  + f"; model version {end.model_version}")

    def _train(self, bucket: int, start: int) -> None:
        r, o = self.result, self.options
        schedule = r.schedule
        batches = schedule.batches(bucket)
        first = schedule.first[bucket]
        train = self.stream.buckets[bucket].train
        bar = tqdm(total=len(batches), initial=start, desc=f"bucket {bucket + 1}/{len(self.stream)}", unit="batch",
                   file=sys.stderr, disable=not o.progress, leave=False, position=1)
        self._bars["batches"] = bar

        window = threading.Semaphore(o.max_in_flight) if o.max_in_flight else None
        finished = threading.Event()

        def requests():
            t0, sent = time.perf_counter(), 0
            for k in range(start, len(batches)):
                while window is not None and not window.acquire(timeout=0.2):
                    if finished.is_set():
                        return
                sequence = first + k
                if o.query_every and (sequence - 1) % o.query_every == 0:
                    self._query(bucket, k, sequence)
                if o.send_files:  # the files as they are on disk; the server decodes them as stored_batch does
                    x, y, files = None, train.labels[batches[k]], stored_files(train, batches[k])
                else:
                    (x, y), files = stored_batch(train, batches[k]), None
                if o.rate:  # a batch goes out once its last sample's time has come, not its first's
                    delay = t0 + (sent + len(y)) / o.rate - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                sent += len(y)
                self._sizes[sequence] = len(y)
                yield Batch(r.stream_id, sequence, bucket, x, y, sample_ids=batches[k],
                            bucket_batches=schedule.counts[bucket], images=files)

        t0 = time.perf_counter()
        try:
            for ack in self.client.train(requests(), schema=self.schema):
                if window is not None:
                    window.release()
                self._record(ack, bucket)
                bar.update(1)
                if bar.n % 10 == 0:
                    served = r.queries[-1]["accuracy"] if r.queries else math.nan
                    bar.set_postfix(preq=f"{np.mean(self._recent):.3f}", served=f"{served:.3f}",
                                    version=ack.model_version, refresh=False)
                if self.on_ack is not None:
                    self.on_ack(ack)
        finally:
            finished.set()
            r.train_seconds += time.perf_counter() - t0
            bar.close()
            self._bars.pop("batches", None)

    def _record(self, ack: TrainAck, bucket: int) -> None:
        r = self.result
        self._applied = max(self._applied, ack.applied_sequence)
        size = self._sizes.pop(ack.sequence, 0)
        if not ack.applied:
            r.duplicates += 1
            return
        if ack.sequence in r.acks:
            r.retrained += 1
        r.samples_applied += size
        r.acks[ack.sequence] = {"bucket": bucket, "samples": size, "accuracy": ack.accuracy, "loss": ack.loss,
                                "model_version": ack.model_version, "samples_trained": ack.samples_trained,
                                "time": time.perf_counter()}
        self._recent.append(ack.accuracy)

    def _query(self, bucket: int, k: int, sequence: int) -> None:
        """Predict a sample of the batches from k on (not trained yet); record accuracy, version, latency."""
        r, o = self.result, self.options
        batches = r.schedule.batches(bucket)
        reach = k + -(-o.query_size // r.schedule.batch_size) + 1
        index = torch.cat(batches[k:reach])[: o.query_size]
        x, y = self.stream.buckets[bucket].train.batch(index, train=False)
        try:
            answer = self.client.predict(x, labels=y, retry=None, timeout=10.0)  # scored, never trained on
        except ServiceError as e:
            r.query_failures.append({"sequence": sequence, "bucket": bucket, "code": e.code.name})
            return
        correct = int((torch.tensor(answer.labels) == y).sum())
        r.queries.append({"sequence": sequence, "bucket": bucket, "position": r.schedule.samples_before(bucket, k),
                          "samples": len(y), "accuracy": correct / len(y), "model_version": answer.model_version,
                          "lag_batches": sequence - 1 - (answer.model_version - self._version_offset),
                          "latency_seconds": answer.latency_seconds, "time": time.perf_counter()})

    def _say(self, message: str) -> None:
        if self.options.progress:
            tqdm.write(message, file=sys.stderr)
