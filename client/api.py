"""A typed client for the ContinualLearner service that hides the generated stubs.

    with Client("127.0.0.1:50051", token="s3cret") as c:
        c.register_eval_set(0, x_test, y_test, schema=Schema(("cat", "dog"), (3, 32, 32)))
        for ack in c.train(Batch("cams", seq, 0, x, y) for seq, (x, y) in enumerate(batches, 1)):
            ...
        row = c.end_bucket(0).row
        print(c.predict(x_new).labels, c.status().metrics["acc"])

Connection: `target` is anything gRPC's name resolution takes (HOST:PORT, dns:///NAME:PORT,
ipv4:127.0.0.1:5001,127.0.0.1:5002, ...). Calls go to one address unless `lb="round_robin"`, which
spreads them over every address the name resolves to (one connection each): the way to spread
Predict over prediction replicas. A target that lists several addresses gets round_robin unless told
otherwise. Insecure on loopback by default; `tls=True` (with optional CA bundle, and a client
certificate and key for mutual TLS) for anything else. A bearer token travels as
`authorization: Bearer <token>` metadata on every call, streaming ones included.

Deadlines: every unary call and every eval-set upload gets `timeout` seconds unless told
otherwise; a Train stream has none by default (it lasts as long as the data does).

Retries: calls that are safe to repeat (GetStatus, Predict, Evaluate, RegisterEvalSet, whose
identical re-upload is acknowledged) are retried with exponential back-off and jitter when the
server answers UNAVAILABLE (down, restarting, shutting down). Two are not, by default:
- Train: a broken stream is resumed by the caller, which knows which batches to send again
  (client.replay reads the applied sequence from GetStatus; the server drops duplicates).
- EndBucket: after a server restart from an older checkpoint, repeating it could end a bucket
  whose last batches were lost. Pass `retry=` once you know every batch of the bucket is applied.
Every other failure is raised as ServiceError with the server's status code and message.
"""
from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clstream_proto import continual_learner_pb2 as pb
from clstream_proto import continual_learner_pb2_grpc as pb_grpc

from . import wire

T = TypeVar("T")
MiB = 1024 * 1024
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ContinualLearner"].full_name


class ServiceError(Exception):
    """A call that failed: the gRPC status code, the server's message and the method."""

    def __init__(self, code: grpc.StatusCode, details: str, method: str = ""):
        super().__init__(f"{method + ': ' if method else ''}{code.name}: {details}")
        self.code = code
        self.details = details
        self.method = method

    @classmethod
    def of(cls, error: grpc.RpcError, method: str) -> "ServiceError":
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = error.details() if hasattr(error, "details") else str(error)
        return cls(code or grpc.StatusCode.UNKNOWN, details or "", method)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off: try, wait initial·multiplier^k (capped, ± jitter), try again.

    Gives up after `attempts` tries or once `deadline` seconds have passed since the first,
    whichever comes first, and raises the last error.
    """

    attempts: int = 6
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2  # each wait is scaled by a uniform factor in [1 - jitter, 1 + jitter]
    deadline: float | None = None
    codes: frozenset = frozenset({grpc.StatusCode.UNAVAILABLE})

    def backoff(self, retry: int, rng: random.Random | None = None) -> float:
        """The wait before retry number `retry` (0 for the first retry)."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** retry)
        if not self.jitter:
            return base
        return base * (1.0 + self.jitter * (2.0 * (rng or random).random() - 1.0))

    def run(self, fn: Callable[[], T], method: str = "", *, sleep: Callable[[float], None] = time.sleep,
            clock: Callable[[], float] = time.monotonic,
            on_retry: Callable[[ServiceError, float], None] | None = None) -> T:
        start = clock()
        retry = 0
        while True:
            try:
                return fn()
            except grpc.RpcError as e:
                error = ServiceError.of(e, method)
            except ServiceError as e:
                error = e
            if error.code not in self.codes or retry + 1 >= self.attempts:
                raise error
            wait = self.backoff(retry)
            if self.deadline is not None and clock() + wait - start > self.deadline:
                raise error
            if on_retry is not None:
                on_retry(error, wait)
            sleep(wait)
            retry += 1


NO_RETRY = RetryPolicy(attempts=1)
_DEFAULT = object()


@dataclass(frozen=True)
class Schema:
    """What the model maps from and to: class names in label order, one sample's shape, and
    optionally the closed range of sample values (the server refuses samples outside it)."""

    class_names: tuple[str, ...]
    input_shape: tuple[int, ...]
    value_range: tuple[float, float] | None = None

    def message(self) -> pb.Schema:
        return wire.schema_message(self.class_names, self.input_shape, self.value_range)


@dataclass(frozen=True)
class Batch:
    """One training batch of one stream: x [n, *input_shape] (tensor or array), y [n] labels."""

    stream_id: str
    sequence: int
    bucket: int
    x: Any
    y: Any
    sample_ids: Any = None  # optional: each sample's identity within its bucket (its dataset index)
    bucket_batches: int = 0  # optional: the bucket's planned batches, all epochs (a cosine lr schedule needs it)
    images: Sequence[bytes] | None = None  # instead of x: whole JPEG/PNG files, which the server decodes


@dataclass(frozen=True)
class TrainAck:
    stream_id: str
    sequence: int
    applied: bool
    duplicate: bool
    accuracy: float  # prequential: before the model learned from the batch (NaN for a duplicate)
    loss: float
    model_version: int
    samples_trained: int
    applied_sequence: int
    durable_sequence: int = 0  # the stream's mark in the server's last checkpoint (0: checkpoints off)
    learned: bool = True  # False: a duplicate, or consumed but refused by the step guard (skip_reason)
    skip_reason: str = ""


@dataclass(frozen=True)
class BucketResult:
    bucket: int
    row: list[float]
    metrics: dict[str, float]
    model_version: int
    open_bucket: int
    already_ended: bool
    checkpoint: str
    durable: bool = False  # in an fsynced checkpoint; False only when the server has no checkpoint directory


@dataclass(frozen=True)
class RollbackResult:
    model_version: int  # now learning and serving
    open_bucket: int
    checkpoint: str
    durable: bool  # in an fsynced checkpoint; False only when the server has no checkpoint directory


@dataclass(frozen=True)
class EvalSetResult:
    bucket: int
    num_samples: int
    already_registered: bool
    registered_buckets: list[int]


@dataclass(frozen=True)
class Prediction:
    label: int
    class_name: str
    top_labels: list[int]
    top_probabilities: list[float]


@dataclass(frozen=True)
class PredictResult:
    predictions: list[Prediction]
    model_version: int
    latency_seconds: float  # as the caller saw it, retries included

    @property
    def labels(self) -> list[int]:
        return [p.label for p in self.predictions]


@dataclass(frozen=True)
class EvaluateResult:
    correct: int
    total: int
    accuracy: float
    loss: float
    model_version: int


@dataclass(frozen=True)
class ServerStatus:
    """GetStatus as plain values; `config` is the server's effective learner configuration."""

    has_model: bool
    schema: dict
    model_version: int
    serving_version: int
    open_bucket: int
    samples_trained: int
    batches_trained: int
    prequential_accuracy: float
    prequential_accuracy_overall: float
    accuracy_matrix: list[list[float]]
    initial_accuracy: list[float]
    metrics: dict[str, float]
    forgetting_per_bucket: list[float]
    buffer: dict
    gem_projections: int
    qp_fallbacks: int
    applied_sequences: dict[str, int]
    eval_buckets: list[int]
    queue_depth: int
    queue_capacity: int
    drift: dict
    last_checkpoint: str
    last_checkpoint_time: float
    config: dict = field(default_factory=dict)
    batches_since_checkpoint: int = 0
    checkpoint_error: str = ""  # why the server's last checkpoint failed; "" when it succeeded
    durable_sequences: dict[str, int] = field(default_factory=dict)
    skipped_steps: dict[str, int] = field(default_factory=dict)  # steps the step guard refused, by reason
    promotion: dict = field(default_factory=dict)  # guarded promotion: promotions, rejections, last canary check
    rollback_versions: list[int] = field(default_factory=list)  # model versions kept for Rollback, oldest first

    def as_dict(self) -> dict:
        return asdict(self)


def _ack(a: pb.TrainAck) -> TrainAck:
    return TrainAck(a.stream_id, a.sequence, a.applied, a.duplicate, a.accuracy, a.loss, a.model_version,
                    a.samples_trained, a.applied_sequence, a.durable_sequence, a.learned, a.skip_reason)


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


LB_POLICIES = ("pick_first", "round_robin")


def lb_policy(target: str, lb: str | None = None) -> str:
    """The load-balancing policy for `target`: `lb` if given, else round_robin for a target that lists
    several addresses (ipv4:A,B / ipv6:A,B) and pick_first (gRPC's default) otherwise."""
    if lb is not None:
        if lb not in LB_POLICIES:
            raise ValueError(f"lb {lb!r}: expected one of {', '.join(LB_POLICIES)}")
        return lb
    scheme, _, addresses = target.partition(":")
    return "round_robin" if scheme in ("ipv4", "ipv6") and "," in addresses else "pick_first"


class Client:
    """One channel to one server; thread-safe (gRPC channels are), cheap to keep open."""

    def __init__(self, target: str, *, token: str | None = None, tls: bool = False,
                 root_certificates: bytes | None = None, certificate_chain: bytes | None = None,
                 private_key: bytes | None = None, server_name: str | None = None, timeout: float = 30.0,
                 retry: RetryPolicy = RetryPolicy(), max_message_bytes: int = 64 * MiB,
                 options: Sequence[tuple[str, Any]] = (), lb: str | None = None):
        if (certificate_chain is None) != (private_key is None):
            raise ValueError("a client certificate and its private key go together (mutual TLS)")
        tls = tls or root_certificates is not None or certificate_chain is not None
        self.target = target
        self.timeout = timeout
        self.retry = retry
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        opts = [("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
                # Reconnect to a restarted server within seconds, not gRPC's default of up to 2 minutes.
                ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 3000), *options]
        if server_name:
            opts.append(("grpc.ssl_target_name_override", server_name))
        self.lb = lb_policy(target, lb)
        opts.append(("grpc.lb_policy_name", self.lb))
        if tls:
            credentials = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
            self.channel = grpc.secure_channel(target, credentials, opts)
        else:
            self.channel = grpc.insecure_channel(target, opts)
        self._stub = pb_grpc.ContinualLearnerStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    # -- life cycle -----------------------------------------------------------------------------

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self, method: str, fn: Callable[[], T], retry) -> T:
        policy = self.retry if retry is _DEFAULT else (retry or NO_RETRY)
        return policy.run(fn, method)

    def _timeout(self, timeout) -> float | None:
        return self.timeout if timeout is _DEFAULT else timeout

    # -- health ---------------------------------------------------------------------------------

    def health(self, timeout: float = 5.0) -> str:
        """The server's health (SERVING, NOT_SERVING, ...); UNAVAILABLE when it cannot be reached."""
        try:
            reply = self._health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=timeout)
        except grpc.RpcError as e:
            return e.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def wait_until_serving(self, timeout: float = 60.0) -> None:
        """Block until health says SERVING, or raise TimeoutError with the last answer."""
        end = time.monotonic() + timeout
        wait, state = 0.05, "UNKNOWN"
        while time.monotonic() < end:
            state = self.health(timeout=max(0.1, min(5.0, end - time.monotonic())))
            if state == "SERVING":
                return
            time.sleep(min(wait, max(0.0, end - time.monotonic())))
            wait = min(1.0, wait * 2)
        raise TimeoutError(f"{self.target} is not serving after {timeout:g}s (health: {state})")

    # -- training -------------------------------------------------------------------------------

    def train(self, batches: Iterable[Batch], schema: Schema | None = None, timeout: float | None = None
              ) -> Iterator[TrainAck]:
        """Stream `batches` and yield one ack per batch, in order.

        `schema`, when given, is declared on the first batch. Not retried: on a ServiceError the
        caller decides what to send again (GetStatus().applied_sequences says what is applied).
        An exception raised while producing `batches` ends the stream after the batches already
        sent have been acknowledged, and is then raised here unchanged.
        """
        failure: list[BaseException] = []

        def requests() -> Iterator[pb.TrainBatch]:
            try:
                for i, b in enumerate(batches):
                    yield pb.TrainBatch(stream_id=b.stream_id, sequence=b.sequence, bucket=b.bucket,
                                        samples=wire.encode_samples(b.x) if b.images is None
                                        else wire.encode_images(b.images), labels=wire.labels_list(b.y),
                                        sample_ids=[] if b.sample_ids is None else wire.labels_list(b.sample_ids),
                                        bucket_batches=b.bucket_batches,
                                        schema=schema.message() if schema is not None and i == 0 else None)
            except Exception as e:  # noqa: BLE001 - handed back to the caller below
                failure.append(e)

        call = self._stub.Train(requests(), timeout=timeout, metadata=self._metadata)
        try:
            for ack in call:
                yield _ack(ack)
        except grpc.RpcError as e:
            if failure:
                raise failure[0] from None
            raise ServiceError.of(e, "Train") from None
        finally:
            call.cancel()  # a no-op once the call is over; ends it if the caller stopped early
        if failure:
            raise failure[0]

    def end_bucket(self, bucket: int, bucket_size: int = 0, timeout: float | None = _DEFAULT,
                   retry: RetryPolicy | None = None, expected_sequences: dict[str, int] | None = None
                   ) -> BucketResult:
        """End `bucket` with the batches applied so far (it does not wait for batches in flight); with
        `expected_sequences` (stream_id → last sequence) only once those are applied, else
        FAILED_PRECONDITION naming the gap. OK means durable on a server with checkpoints (a failed
        checkpoint is FAILED_PRECONDITION, "not durable: ..."). Not retried unless `retry` is given."""
        request = pb.EndBucketRequest(bucket=bucket, bucket_size=bucket_size, expected_sequences=expected_sequences)
        r = self._run("EndBucket", lambda: self._stub.EndBucket(
            request, timeout=self._timeout(timeout), metadata=self._metadata), retry)
        return BucketResult(r.bucket, wire.row_list(r.row), wire.metrics_dict(r.metrics), r.model_version,
                            r.open_bucket, r.already_ended, r.checkpoint, r.durable)

    def register_eval_set(self, bucket: int, x=None, y=None, schema: Schema | None = None, chunk_size: int = 512,
                          timeout: float | None = _DEFAULT, retry: RetryPolicy | None = _DEFAULT, *,
                          chunks: Callable[[], Iterable[tuple[Any, Any]]] | None = None) -> EvalSetResult:
        """Upload bucket's held-out set in chunks; sending the identical set again is a no-op.

        Either x [n, ...] and y [n], sent `chunk_size` samples per message, or `chunks`: a function
        returning an iterable of (x, y) pieces, called again on a retry, for a set too large to hold
        in memory at once (a bucket of decoded images).
        """
        if (chunks is None) == (x is None or y is None):
            raise ValueError("give either x and y, or chunks")
        if chunks is None:
            n = len(y)
            chunks = lambda: ((x[s], y[s]) for s in _chunks(n, chunk_size))  # noqa: E731

        def messages() -> Iterator[pb.EvalSetChunk]:
            for i, (xs, ys) in enumerate(chunks()):
                yield pb.EvalSetChunk(bucket=bucket, samples=wire.encode_samples(xs), labels=wire.labels_list(ys),
                                      schema=schema.message() if schema is not None and i == 0 else None)

        r = self._run("RegisterEvalSet", lambda: self._stub.RegisterEvalSet(
            messages(), timeout=self._timeout(timeout), metadata=self._metadata), retry)
        return EvalSetResult(r.bucket, r.num_samples, r.already_registered, list(r.registered_buckets))

    # -- serving --------------------------------------------------------------------------------

    def predict(self, x=None, *, images: Sequence[bytes] | None = None, top_k: int = 1, labels=None,
                timeout: float | None = _DEFAULT, retry: RetryPolicy | None = _DEFAULT) -> PredictResult:
        """Labels and top-k probabilities for x [n, *input_shape] or for encoded JPEG/PNG `images`.

        `labels` [n], optional: the true labels, when the caller knows them. The server only scores
        its answers with them (its served-accuracy metric, clstream_served_samples_total); it never
        trains on them."""
        if (x is None) == (images is None):
            raise ValueError("give either samples x or encoded images")
        samples = wire.encode_samples(x) if x is not None else wire.encode_images(images)
        request = pb.PredictRequest(samples=samples, top_k=top_k,
                                    labels=wire.labels_list(labels) if labels is not None else None)
        t0 = time.perf_counter()
        r = self._run("Predict", lambda: self._stub.Predict(
            request, timeout=self._timeout(timeout), metadata=self._metadata), retry)
        latency = time.perf_counter() - t0
        return PredictResult([Prediction(p.label, p.class_name, list(p.top_labels), list(p.top_probabilities))
                              for p in r.predictions], r.model_version, latency)

    def evaluate(self, x, y, chunk_size: int = 512, timeout: float | None = _DEFAULT,
                 retry: RetryPolicy | None = _DEFAULT) -> EvaluateResult:
        """Accuracy and mean loss of the serving snapshot on labelled samples."""
        n = len(y)

        def chunks() -> Iterator[pb.EvaluateChunk]:
            for s in _chunks(n, chunk_size):
                yield pb.EvaluateChunk(samples=wire.encode_samples(x[s]), labels=wire.labels_list(y[s]))

        r = self._run("Evaluate", lambda: self._stub.Evaluate(
            chunks(), timeout=self._timeout(timeout), metadata=self._metadata), retry)
        return EvaluateResult(r.correct, r.total, r.accuracy, r.loss, r.model_version)

    def forget_stream(self, stream_id: str, timeout: float | None = _DEFAULT,
                      retry: RetryPolicy | None = _DEFAULT) -> dict:
        """Admin: drop `stream_id`'s applied mark (exactly-once no longer covers that id). Returns
        {"stream_id", "forgotten", "sequence", "streams_known"}; safe to repeat."""
        r = self._run("ForgetStream", lambda: self._stub.ForgetStream(
            pb.ForgetStreamRequest(stream_id=stream_id), timeout=self._timeout(timeout), metadata=self._metadata),
            retry)
        return {"stream_id": r.stream_id, "forgotten": r.forgotten, "sequence": r.sequence,
                "streams_known": r.streams_known}

    def rollback(self, to_version: int, timeout: float | None = _DEFAULT) -> RollbackResult:
        """Put the learner and serving back to a kept model version (status().rollback_versions), bit for
        bit; the streams' marks stay (RELIABILITY.md). Not retried: GetStatus says whether it happened."""
        r = self._run("Rollback", lambda: self._stub.Rollback(
            pb.RollbackRequest(to_version=to_version), timeout=self._timeout(timeout), metadata=self._metadata),
            NO_RETRY)
        return RollbackResult(r.model_version, r.open_bucket, r.checkpoint, r.durable)

    def status(self, timeout: float | None = _DEFAULT, retry: RetryPolicy | None = _DEFAULT) -> ServerStatus:
        r = self._run("GetStatus", lambda: self._stub.GetStatus(
            pb.GetStatusRequest(), timeout=self._timeout(timeout), metadata=self._metadata), retry)
        return ServerStatus(**wire.status_dict(r))


__all__ = ["Batch", "BucketResult", "Client", "EvalSetResult", "EvaluateResult", "NO_RETRY", "Prediction",
           "PredictResult", "RetryPolicy", "RollbackResult", "Schema", "ServerStatus", "ServiceError", "TrainAck"]
