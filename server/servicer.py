"""The ContinualLearner service: validates every request completely, then hands training work to
the worker and answers predictions from the serving snapshot.

Every handler maps ServiceError to its status code with a message naming the field; anything else
is logged with its traceback and answered INTERNAL without details. No handler touches the
Learner: training goes through the worker's queue, predictions through a published snapshot,
status through the worker's published status.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import queue
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Callable, Iterator

import grpc
import torch
import torch.nn.functional as F

from clstream_proto import continual_learner_pb2 as pb
from clstream_proto import continual_learner_pb2_grpc as pb_grpc

from cl_engine.views import InputView

from .codec import DecodeLimits, EncodedBatch, check_images, decode_labels, decode_samples
from .errors import Cancelled, FailedPrecondition, InvalidArgument, ServiceError
from .idle import IdleClock, idle_limited
from .metrics import ServerMetrics
from .schema import Schema, SchemaHolder
from .schema_bounds import SchemaBounds
from .settings import ServerSettings
from .snapshot import Snapshot, SnapshotHolder
from .watch import ModelWatch
from .operations import CallScope, EndBucketOp, ForgetStreamOp, RegisterEvalOp, RollbackOp, TrainOp
from .worker import TrainingWorker

log = logging.getLogger(__name__)
MAX_STREAM_ID = 128
_END = object()


@contextlib.contextmanager
def answering(method: str, context, metrics: ServerMetrics, done: Callable[[grpc.StatusCode], None] | None = None):
    """Run a handler's body: ServiceError → its status and message; anything else is logged with its
    traceback and answered INTERNAL without details. Counts the call by method and code."""
    code = grpc.StatusCode.OK
    try:
        yield
    except ServiceError as e:
        code = e.code
        context.abort(e.code, e.message)
    except Exception:
        code = grpc.StatusCode.INTERNAL
        log.exception("%s failed", method)
        context.abort(code, f"{method}: internal error; the server log has the details")
    finally:
        metrics.requests.labels(method, code.name).inc()
        if done is not None:
            done(code)


def _handle(method: str):
    """`answering` around a unary-response handler."""
    def wrap(fn):
        @functools.wraps(fn)
        def handler(self: "ContinualLearnerServicer", request, context):
            with answering(method, context, self.metrics):
                return fn(self, request, context)
        return handler
    return wrap


def _valid_stream_id(stream_id: str) -> bool:
    return 1 <= len(stream_id) <= MAX_STREAM_ID and stream_id.isascii() and stream_id.isprintable()


def _wait(future, context):
    """The future's result, without outliving the call (the server's stop ends every call)."""
    while True:
        try:
            return future.result(timeout=0.5)
        except FutureTimeout:
            if not context.is_active():
                raise Cancelled("the call ended while its operation was waiting") from None


def learning_metrics(m: dict) -> pb.LearningMetrics:
    return pb.LearningMetrics(**{k: float(m[k]) for k in pb.LearningMetrics.DESCRIPTOR.fields_by_name})


class ContinualLearnerServicer(pb_grpc.ContinualLearnerServicer):
    def __init__(self, settings: ServerSettings, schemas: SchemaHolder, worker: TrainingWorker,
                 snapshots: SnapshotHolder, metrics: ServerMetrics, watch: ModelWatch | None = None):
        self.settings = settings
        self.watch = watch
        self.schemas = schemas
        self.worker = worker
        self.snapshots = snapshots
        self.metrics = metrics
        self.limits = DecodeLimits(
            max_samples=settings.max_batch_samples, max_image_bytes=settings.max_image_bytes,
            max_image_pixels=settings.max_image_pixels, max_message_pixels=settings.max_message_pixels,
            image_mean=tuple(settings.image_mean) if settings.image_mean else None,
            image_std=tuple(settings.image_std) if settings.image_std else None,
            image_transform=settings.image_transform)
        self.view = InputView(uint8_inputs=settings.uint8_inputs)  # the learner's evaluation view of uint8 samples
        self.bounds = SchemaBounds(settings.model, settings.max_sample_values, settings.max_classes,
                                   settings.max_model_bytes)
        self.decode_pool = (ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="clstream-decode")
                            if settings.decode_threads > 1 else None)

    def close(self) -> None:
        """Let the image-decoding threads go (after the server has stopped taking calls)."""
        if self.decode_pool is not None:
            self.decode_pool.shutdown(wait=False, cancel_futures=True)

    # -- shared validation --------------------------------------------------------------------------

    def _schema(self, message, within: Schema | None = None) -> Schema:
        """The schema to validate `message` against: the server's, or the one declared earlier in the
        same call (`within`), which the server adopts only once the whole call has passed."""
        declared = Schema.from_proto(message.schema) if message.HasField("schema") else None
        if within is None:
            if declared is not None and self.schemas.schema is None:  # a first schema: bounded before any allocation
                self.bounds.check(declared)
            return self.schemas.check(declared)
        if declared is not None and not declared.matches(within):
            raise FailedPrecondition(f"schema mismatch: this message declares {declared.describe()}, an earlier "
                                     f"one of the same call {within.describe()}")
        return within

    def _bucket(self, bucket: int, field: str = "bucket") -> int:
        if bucket >= self.settings.max_buckets:
            raise InvalidArgument(field, f"got {bucket}; expected 0..{self.settings.max_buckets - 1}")
        return bucket

    def _labelled(self, message, schema: Schema, train: bool = False, keep_uint8: bool = False
                  ) -> tuple[torch.Tensor | EncodedBatch, torch.Tensor]:
        """Samples and labels, checked; a Train batch's encoded images only as far as their headers go
        (their decoding is the worker's: TrainingWorker._train)."""
        if train and message.samples.WhichOneof("payload") == "images":  # decoded where the batch is applied
            x = check_images(message.samples.images, "samples.images", schema.input_shape, self.limits)
        else:
            x = decode_samples(message.samples, "samples", schema.input_shape, self.limits, train, self.decode_pool,
                               keep_uint8)
            schema.check_values(self.view.evaluation(x), "samples")  # the values the model will see
        if train and 0 < len(x) < self.bounds.min_batch(schema):
            raise InvalidArgument("samples", f"got {len(x)} sample; the server's {self.settings.model} model needs at "
                                             f"least {self.bounds.min_batch(schema)} per training batch (batch "
                                             "normalisation needs more than one value per channel)")
        return x, decode_labels(message.labels, "labels", len(x), schema.num_classes)

    @contextlib.contextmanager
    def _serving(self) -> Iterator[tuple[Snapshot, Schema]]:
        """The snapshot that answers the whole call, held (never refreshed) until the block ends. (How
        many such calls run at once is bounded by the call budgets, server/budgets.py.)"""
        with self.snapshots.reading() as snapshot:
            schema = self.schemas.schema
            if snapshot is None or schema is None:
                raise FailedPrecondition("no model yet: the schema is declared with the first TrainBatch or "
                                         "EvalSetChunk (or fixed in the server's settings)")
            yield snapshot, schema

    # -- Train ----------------------------------------------------------------------------------------

    def _train_op(self, batch: pb.TrainBatch, scope: CallScope, within: Schema | None = None) -> TrainOp:
        if not _valid_stream_id(batch.stream_id):
            raise InvalidArgument("stream_id", f"got {batch.stream_id[:40]!r}{'…' if len(batch.stream_id) > 40 else ''}"
                                               f"; expected 1..{MAX_STREAM_ID} printable ASCII characters")
        if batch.sequence < 1:
            raise InvalidArgument("sequence", "got 0; expected >= 1, strictly increasing per stream")
        bucket = self._bucket(batch.bucket)
        schema = self._schema(batch, within)  # the worker establishes it once a batch of it is applied
        x, y = self._labelled(batch, schema, train=True)
        ids = None
        if batch.sample_ids:
            if len(batch.sample_ids) != len(y):
                raise InvalidArgument("sample_ids", f"{len(batch.sample_ids)} ids for {len(y)} samples; expected one "
                                                    "per sample, or none")
            # identities are the stream's own: two streams' sample 7 are two samples (a hash of both, wrapping)
            ids = torch.tensor(batch.sample_ids, dtype=torch.int64) * 1_000_003 + zlib.crc32(batch.stream_id.encode())
        return TrainOp(scope, batch.stream_id, batch.sequence, bucket, x, y, schema, ids, batch.bucket_batches)

    def Train(self, request_iterator, context):
        def done(code: grpc.StatusCode) -> None:
            if code not in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED):
                self.metrics.rejected_batches.labels(code.name).inc()

        closed = self._open_train_stream(context)
        try:
            with answering("Train", context, self.metrics, done):
                yield from self._train(request_iterator, context)
        finally:
            closed()

    def _open_train_stream(self, context) -> Callable[[], None]:
        """Counts this Train call in clstream_train_streams_open; the returned function uncounts it,
        once. It runs from the handler's finally and from gRPC's termination callback: a generator
        that gRPC leaves suspended after a cancellation reaches its finally only when collected."""
        gauge, lock, state = self.metrics.train_streams_open, threading.Lock(), {"open": True}

        def close() -> None:
            with lock:
                if not state["open"]:
                    return
                state["open"] = False
            gauge.dec()

        gauge.inc()
        context.add_callback(close)
        return close

    def _train(self, requests, context):
        scope = CallScope.of(context)
        window = threading.Semaphore(self.settings.queue_size)  # acks owed to this caller, at most
        pending: queue.Queue = queue.Queue()
        clock = IdleClock()  # not idle while an ack is owed

        def read() -> None:
            schema = None  # declared by this call's first batch; later ones may omit it
            try:
                for batch in idle_limited(requests, self.settings.stream_idle_timeout_seconds, context, clock):
                    while not window.acquire(timeout=0.2):
                        if not scope.live:
                            return
                    op = self._train_op(batch, scope, schema)
                    schema = op.schema
                    clock.owe(1)
                    pending.put((op, self.worker.submit(op, self.settings.enqueue_timeout_seconds)))
            except ServiceError as e:
                pending.put(e)
            except grpc.RpcError:
                pending.put(Cancelled("the client ended the stream"))
            except Exception as e:
                log.exception("reading the Train stream failed")
                pending.put(e)
            finally:
                pending.put(_END)

        reader = threading.Thread(target=read, name="clstream-train-reader", daemon=True)
        reader.start()
        try:
            while True:
                item = pending.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                op, future = item
                result = _wait(future, context)
                window.release()
                clock.owe(-1)
                yield pb.TrainAck(stream_id=op.stream_id, sequence=op.sequence, applied=result.applied,
                                  duplicate=not result.applied, accuracy=result.accuracy, loss=result.loss,
                                  model_version=result.version, samples_trained=result.samples_trained,
                                  applied_sequence=result.applied_sequence,
                                  durable_sequence=result.durable_sequence, learned=result.learned,
                                  skip_reason=result.skip_reason)
        finally:
            scope.fail()  # whatever this call still has queued is dropped unapplied

    # -- EndBucket, RegisterEvalSet -------------------------------------------------------------------

    @_handle("EndBucket")
    def EndBucket(self, request: pb.EndBucketRequest, context) -> pb.EndBucketResponse:
        bucket = self._bucket(request.bucket)
        for stream_id in request.expected_sequences:
            if not _valid_stream_id(stream_id):
                raise InvalidArgument("expected_sequences", f"key {stream_id[:40]!r} is not a stream_id; expected "
                                                            f"1..{MAX_STREAM_ID} printable ASCII characters")
        op = EndBucketOp(CallScope.of(context), bucket, request.bucket_size or None, dict(request.expected_sequences))
        r = _wait(self.worker.submit(op, self.settings.enqueue_timeout_seconds), context)
        return pb.EndBucketResponse(bucket=r.bucket, row=pb.AccuracyRow(accuracy=r.row),
                                    metrics=learning_metrics(r.metrics), model_version=r.version,
                                    open_bucket=r.open_bucket, already_ended=r.already_ended, checkpoint=r.checkpoint,
                                    durable=r.durable)

    @_handle("RegisterEvalSet")
    def RegisterEvalSet(self, request_iterator, context) -> pb.RegisterEvalSetResponse:
        bucket, schema, xs, ys, total = None, None, [], [], 0
        for i, chunk in enumerate(idle_limited(request_iterator, self.settings.stream_idle_timeout_seconds, context)):
            if bucket is None:
                bucket = self._bucket(chunk.bucket)
            elif chunk.bucket != bucket:
                raise InvalidArgument(f"chunk {i}: bucket", f"got {chunk.bucket}; expected {bucket} like the first "
                                                            "chunk (one held-out set per call)")
            schema = self._schema(chunk, within=schema)
            x, y = self._labelled(chunk, schema, keep_uint8=True)  # kept as it came: uint8 stays uint8
            total += len(y)
            if total > self.settings.max_eval_samples:
                raise InvalidArgument("samples", f"the set exceeds {self.settings.max_eval_samples} samples, the "
                                                 "most this server keeps per held-out set")
            xs.append(x)
            ys.append(y)
        if bucket is None:
            raise InvalidArgument("chunks", "the call sent no chunk; expected at least one EvalSetChunk")
        if any(x.dtype != torch.uint8 for x in xs):  # a set of mixed chunks is held as float32, each viewed alike
            xs = [self.view.evaluation(x) for x in xs]
        op = RegisterEvalOp(CallScope.of(context), bucket, torch.cat(xs), torch.cat(ys), schema)
        r = _wait(self.worker.submit(op, self.settings.enqueue_timeout_seconds), context)
        return pb.RegisterEvalSetResponse(bucket=r.bucket, num_samples=r.num_samples,
                                          already_registered=r.already_registered, registered_buckets=r.registered)

    # -- Predict, Evaluate ----------------------------------------------------------------------------

    def Predict(self, request: pb.PredictRequest, context) -> pb.PredictResponse:
        t0 = time.perf_counter()

        def done(code: grpc.StatusCode) -> None:
            self.metrics.predict_requests.labels(code.name).inc()
            self.metrics.predict_seconds.observe(time.perf_counter() - t0)

        with answering("Predict", context, self.metrics, done):
            return self._predict(request)

    def _predict(self, request: pb.PredictRequest) -> pb.PredictResponse:
        with self._serving() as (snapshot, schema):
            k = request.top_k or 1
            if k > schema.num_classes:
                raise InvalidArgument("top_k", f"got {k}; expected 1..{schema.num_classes}")
            x = decode_samples(request.samples, "samples", schema.input_shape, self.limits, pool=self.decode_pool,
                               keep_uint8=True)
            schema.check_values(self.view.evaluation(x), "samples")
            truth = decode_labels(request.labels, "labels", len(x), schema.num_classes) if request.labels else None
            logits = snapshot.logits(x, self.view.evaluation)  # uint8 viewed as the learner views it
            version = snapshot.version
        finite = torch.isfinite(logits).all(dim=1)
        if not bool(finite.all()):  # never a NaN answer
            raise FailedPrecondition(f"samples: sample {int((~finite).nonzero()[0, 0])}: the serving model (version "
                                     f"{version}) gives non-finite scores for it; no answer rather than a NaN")
        probabilities = torch.softmax(logits, dim=1)
        top_p, top_i = probabilities.topk(k, dim=1)
        if truth is not None:  # scored only, never trained on
            correct = int((top_i[:, 0] == truth).sum())
            self.metrics.served_samples.labels("correct").inc(correct)
            self.metrics.served_samples.labels("wrong").inc(len(truth) - correct)
        names = schema.class_names
        return pb.PredictResponse(model_version=version, predictions=[
            pb.Prediction(label=labels[0], class_name=names[labels[0]], top_labels=labels, top_probabilities=p)
            for labels, p in zip(top_i.tolist(), top_p.tolist())])

    @_handle("Evaluate")
    def Evaluate(self, request_iterator, context) -> pb.EvaluateResponse:
        with self._serving() as (snapshot, schema):  # one snapshot answers the whole call
            correct, total, loss = 0, 0, 0.0
            for chunk in idle_limited(request_iterator, self.settings.stream_idle_timeout_seconds, context):
                x, y = self._labelled(chunk, schema, keep_uint8=True)
                logits = snapshot.logits(x, self.view.evaluation)
                correct += int((logits.argmax(dim=1) == y).sum())
                total += len(y)
                loss += float(F.cross_entropy(logits, y, reduction="sum"))
            version = snapshot.version
        if total == 0:
            raise InvalidArgument("chunks", "the call sent no samples; expected at least one EvaluateChunk")
        return pb.EvaluateResponse(correct=correct, total=total, accuracy=correct / total, loss=loss / total,
                                   model_version=version)

    # -- ForgetStream (admin) -------------------------------------------------------------------------

    @_handle("ForgetStream")
    def ForgetStream(self, request: pb.ForgetStreamRequest, context) -> pb.ForgetStreamResponse:
        if not _valid_stream_id(request.stream_id):
            raise InvalidArgument("stream_id", f"got {request.stream_id[:40]!r}; expected 1..{MAX_STREAM_ID} printable "
                                               "ASCII characters")
        op = ForgetStreamOp(CallScope.of(context), request.stream_id)
        r = _wait(self.worker.submit(op, self.settings.enqueue_timeout_seconds), context)
        return pb.ForgetStreamResponse(stream_id=r.stream_id, forgotten=r.sequence is not None,
                                       sequence=r.sequence or 0, streams_known=r.streams_known)

    # -- Rollback -------------------------------------------------------------------------------------

    @_handle("Rollback")
    def Rollback(self, request: pb.RollbackRequest, context) -> pb.RollbackResponse:
        if request.to_version == 0:
            raise InvalidArgument("to_version", "missing; expected one of GetStatus.rollback_versions")
        op = RollbackOp(CallScope.of(context), request.to_version)
        version, open_bucket, checkpoint, durable = _wait(
            self.worker.submit(op, self.settings.enqueue_timeout_seconds), context)
        return pb.RollbackResponse(model_version=version, open_bucket=open_bucket, checkpoint=checkpoint,
                                   durable=durable)

    # -- WatchModel (for replicas) ----------------------------------------------------------------------

    def WatchModel(self, request: pb.WatchModelRequest, context):
        with answering("WatchModel", context, self.metrics):
            if self.watch is None:
                raise FailedPrecondition("WatchModel: this server publishes no versions to replicas")
            yield from self.watch.stream(request, context)

    # -- GetStatus ------------------------------------------------------------------------------------

    @_handle("GetStatus")
    def GetStatus(self, request: pb.GetStatusRequest, context) -> pb.Status:
        return status_message(self.worker.status(), self.snapshots.version, self.worker.queue_depth,
                              self.worker.queue_size, self.settings.public())


def status_message(s: dict, serving_version: int, queue_depth: int, queue_capacity: int, config: dict
                   ) -> pb.Status:
    schema: Schema | None = s["schema"]
    buffer = s["buffer"]
    drift = s["drift"]
    return pb.Status(
        has_model=s["has_model"],
        schema=schema.to_proto() if schema is not None else None,
        model_version=s["version"], serving_version=serving_version, open_bucket=s["open_bucket"],
        samples_trained=s["samples_trained"], batches_trained=s["batches_trained"],
        prequential_accuracy=s["prequential_accuracy"],
        prequential_accuracy_overall=s["prequential_accuracy_overall"],
        accuracy_matrix=[pb.AccuracyRow(accuracy=row) for row in s["matrix"]],
        initial_accuracy=pb.AccuracyRow(accuracy=s["initial"]),
        metrics=learning_metrics(s["metrics"]),
        forgetting_per_bucket=s["forgetting_per_bucket"],
        buffer=pb.BufferStatus(size=buffer["size"], capacity=buffer["capacity"], bytes=buffer["bytes"],
                               by_bucket=buffer["by_bucket"], by_class=buffer["by_class"],
                               asked_by_bucket=buffer.get("asked_by_bucket", {}), bounded=buffer.get("bounded", True)),
        gem_projections=s["projections"], qp_fallbacks=s["qp_fallbacks"],
        applied_sequences=s["applied_sequences"], eval_buckets=s["eval_buckets"],
        queue_depth=queue_depth, queue_capacity=queue_capacity,
        drift=pb.DriftStatus(statistic=drift["statistic"], threshold=drift["threshold"], events=drift["events"],
                             last_event_version=drift["last_event_version"]),
        last_checkpoint=s["last_checkpoint"], last_checkpoint_time=s["last_checkpoint_time"],
        config_json=json.dumps(config, sort_keys=True),
        batches_since_checkpoint=s["batches_since_checkpoint"], checkpoint_error=s["checkpoint_error"],
        durable_sequences=s["durable_sequences"],
        skipped_steps=s["skipped_steps"],
        promotion=pb.PromotionStatus(**s["promotion"]),
        rollback_versions=s["rollback_versions"],
    )

