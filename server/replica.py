"""A prediction replica (`clstream-server --follow ADDR`): serves Predict, Evaluate and GetStatus from
the versions the learner at ADDR publishes, and trains nothing.

The Follower stands where the training worker stands in a learner: one thread holds a WatchModel
call to the learner (server/watch.py), assembles each version from its chunks, loads it into a
module built from the learner's model name and schema, and publishes it to the replica's own
SnapshotHolder, the one Predict answers from. When the learner goes away (restart, network) the
replica keeps serving its last version and reconnects with back-off (RECONNECT_SECONDS), telling the
learner which version it has so that an unchanged one is not sent again. A version the replica
cannot use (another schema than the one it serves, an unknown model, a broken encoding) is logged
and not served; the replica keeps the version it has and tries again on reconnect.

ReplicaGuard answers every ContinualLearner call but Predict, Evaluate and GetStatus (Train,
EndBucket, RegisterEvalSet, ForgetStream, WatchModel, and any added later) FAILED_PRECONDITION,
naming the learner to send it to.
"""
from __future__ import annotations

import io
import logging
import threading
import time
from typing import Callable

import grpc
import torch
from prometheus_client import Counter, Gauge

from cl_engine.learner import resolve_device
from cl_engine.models import build_model
from cl_engine.precision import prepare
from clstream_proto import continual_learner_pb2 as pb
from clstream_proto import continual_learner_pb2_grpc as pb_grpc

from .errors import ServiceError
from .metrics import ServerMetrics
from .schema import Schema, SchemaHolder
from .settings import ServerSettings
from .snapshot import SnapshotHolder
from .worker import TrainingWorker, WorkerOptions

log = logging.getLogger(__name__)
SERVICE_PREFIX = "/" + pb.DESCRIPTOR.services_by_name["ContinualLearner"].full_name + "/"
SERVED = frozenset({"Predict", "Evaluate", "GetStatus"})
RECONNECT_SECONDS = (0.2, 5.0)  # back-off between attempts to reach the learner: first, doubling up to


class BadVersion(Exception):
    """A version the replica cannot use; the stream is dropped and followed again after the back-off."""


def learner_channel(settings: ServerSettings) -> grpc.Channel:
    """The replica's channel to the learner: TLS and the bearer token as any client's."""
    options = [("grpc.max_receive_message_length", settings.max_message_bytes),
               ("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_timeout_ms", 10_000),
               ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
               ("grpc.max_reconnect_backoff_ms", 3000)]
    if not settings.follow_tls:
        return grpc.insecure_channel(settings.follow, options)
    read = (lambda p: p.read_bytes() if p is not None else None)
    credentials = grpc.ssl_channel_credentials(read(settings.follow_ca_file), read(settings.follow_key_file),
                                               read(settings.follow_cert_file))
    return grpc.secure_channel(settings.follow, credentials, options)


class Follower:
    """The replica's worker: follows the learner's versions. Offers what the service and GetStatus ask
    of a training worker (start, stop, status, queue_depth, queue_size)."""

    queue_depth = 0
    queue_size = 0

    def __init__(self, settings: ServerSettings, schemas: SchemaHolder, snapshots: SnapshotHolder,
                 metrics: ServerMetrics, on_model: Callable[[], None] = lambda: None):
        self.settings = settings
        self.schemas = schemas
        self.snapshots = snapshots
        self.on_model = on_model
        self.device = resolve_device(settings.device)
        self.limit_bytes = 2 * settings.max_model_bytes  # an encoded version larger than this is refused
        self._metadata = (("authorization", f"Bearer {settings.follow_token.get_secret_value()}"),
                          ) if settings.follow_token else ()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._call = None
        self._module: torch.nn.Module | None = None
        self._module_key: tuple | None = None
        self.serving_learner_id = ""
        self.learner_id = ""
        self.learner_version = 0  # the newest version the learner said it has published
        self.learner_published = 0.0  # and when (Unix time, the learner's clock)
        self.connected = False
        empty = TrainingWorker(WorkerOptions(settings.learner_config(), queue_size=1), SchemaHolder(), SnapshotHolder(),
                               metrics)
        empty.begin()
        self._empty_status = empty.status()  # what GetStatus says of training on a replica: none
        r = metrics.registry  # no learner status here: samples trained, buffer, matrix are the learner's metrics
        Gauge("clstream_replica_serving_version", "Model version this replica serves (0: none yet).",
              registry=r).set_function(lambda: self.snapshots.version)
        Gauge("clstream_replica_learner_version", "Newest model version the learner has published, as this "
              "replica last heard.", registry=r).set_function(lambda: self.learner_version)
        Gauge("clstream_replica_lag_versions", "Versions between the learner's newest and the one this replica "
              "serves.", registry=r).set_function(lambda: self.lag()[0])
        Gauge("clstream_replica_lag_seconds", "Since when the learner has had a version this replica does not "
              "serve yet (0: caught up).", registry=r).set_function(lambda: self.lag()[1])
        Gauge("clstream_replica_connected", "1 while this replica holds a WatchModel stream to the learner.",
              registry=r).set_function(lambda: float(self.connected))
        self.updates = Counter("clstream_replica_updates", "Model versions this replica received and serves.",
                               registry=r)

    # -- what the service asks of a worker ------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="clstream-replica", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> dict:
        self._stopping.set()
        call = self._call
        if call is not None:
            call.cancel()
        if self._thread is not None:
            self._thread.join(timeout)
        return {"durable": True, "checkpoints": False, "batches_lost": 0, "error": "", "last_checkpoint": ""}

    def status(self) -> dict:
        """A training worker's status with nothing trained here: has_model, the schema and the learner's
        newest version (model_version) are the replica's view of the learner."""
        return {**self._empty_status, "has_model": self.snapshots.current() is not None,
                "schema": self.schemas.schema, "version": self.learner_version}

    def lag(self) -> tuple[int, float]:
        """(versions, seconds) between the learner's newest version and the one served."""
        serving = self.snapshots.current()
        if serving is None:
            return self.learner_version, (time.time() - self.learner_published if self.learner_published else 0.0)
        if (self.serving_learner_id, serving.version) == (self.learner_id, self.learner_version):
            return 0, 0.0
        return abs(self.learner_version - serving.version), max(0.0, time.time() - self.learner_published)

    # -- following ----------------------------------------------------------------------------------

    def _run(self) -> None:
        low, high = RECONNECT_SECONDS
        wait = low
        while not self._stopping.is_set():
            got = False
            try:
                got = self._follow()
            except grpc.RpcError as e:
                if not self._stopping.is_set():
                    log.warning("replica: the learner at %s: %s: %s; serving version %d, retrying in %.1fs",
                                self.settings.follow, e.code().name if hasattr(e, "code") else "error",
                                e.details() if hasattr(e, "details") else e, self.snapshots.version, wait)
            except BadVersion as e:
                log.error("replica: %s; serving version %d, retrying in %.1fs", e, self.snapshots.version, wait)
            except Exception:  # a bug must not end the following: log it, keep serving, try again
                log.exception("replica: following the learner at %s failed; serving version %d, retrying in %.1fs",
                              self.settings.follow, self.snapshots.version, wait)
            finally:
                self.connected = False
            wait = low if got else min(high, wait * 2)
            self._stopping.wait(wait)

    def _follow(self) -> bool:
        """One WatchModel call, until it ends; whether any version arrived through it."""
        serving = self.snapshots.current()
        request = pb.WatchModelRequest(have_learner_id=self.serving_learner_id,
                                       have_version=serving.version if serving else 0)
        with learner_channel(self.settings) as channel:
            self._call = call = pb_grpc.ContinualLearnerStub(channel).WatchModel(request, metadata=self._metadata)
            if self._stopping.is_set():
                call.cancel()
            got, first, parts, received = False, None, [], 0
            for chunk in call:
                self.connected = True
                self.learner_id, self.learner_version = chunk.learner_id, chunk.latest_version
                self.learner_published = chunk.latest_published_time
                if chunk.offset == 0:
                    if chunk.total_bytes > self.limit_bytes:
                        raise BadVersion(f"version {chunk.model_version} is {chunk.total_bytes} bytes encoded, more "
                                         f"than this replica takes (2 × max_model_bytes = {self.limit_bytes})")
                    first, parts, received = chunk, [], 0
                elif first is None or chunk.offset != received or chunk.model_version != first.model_version:
                    raise BadVersion(f"chunk of version {chunk.model_version} at offset {chunk.offset} out of order")
                parts.append(chunk.weights)
                received += len(chunk.weights)
                if received >= first.total_bytes:
                    self._serve(first, b"".join(parts))
                    got, first, parts = True, None, []
            return got

    def _serve(self, first: pb.ModelChunk, data: bytes) -> None:
        """Load a complete version and publish it to the replica's serving snapshot."""
        schema = Schema.from_proto(first.schema)
        try:
            self.schemas.establish(schema)
        except ServiceError as e:
            raise BadVersion(f"the learner's version {first.model_version} has another schema than the one this "
                             f"replica serves ({e.message}); restart the replica to follow it") from None
        key = (first.model, schema.input_shape, schema.num_classes)
        try:
            if self._module_key != key:
                self._module = prepare(build_model(first.model, schema.input_shape, schema.num_classes).to(self.device),
                                       self.settings.precision, self.settings.channels_last)
                self._module_key = key
            state = torch.load(io.BytesIO(data), map_location=self.device, weights_only=True)
            with torch.no_grad():
                self._module.load_state_dict(state)
        except Exception as e:  # anything a version's encoding can go wrong with: not served
            raise BadVersion(f"version {first.model_version} of the learner does not load into a {first.model} "
                             f"model ({type(e).__name__}: {e})") from None
        self.snapshots.publish_model(self._module, first.model_version, self.device)
        self.serving_learner_id = first.learner_id
        self.updates.inc()
        log.info("replica: serving version %d from the learner at %s", first.model_version, self.settings.follow)
        self.on_model()


class ReplicaGuard(grpc.ServerInterceptor):
    """FAILED_PRECONDITION, naming the learner, for every ContinualLearner method a replica does not serve."""

    def __init__(self, learner: str, on_refuse: Callable[[str], None] = lambda method: None):
        self.learner = learner
        self.on_refuse = on_refuse

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(SERVICE_PREFIX) or method[len(SERVICE_PREFIX):] in SERVED:
            return handler
        name = method[len(SERVICE_PREFIX):]
        message = (f"{name}: this server is a prediction replica following the learner at {self.learner}; it "
                   f"answers only {', '.join(sorted(SERVED))}: send {name} to the learner")

        def refuse(request, context):
            self.on_refuse(name)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, message)

        make = {(False, False): grpc.unary_unary_rpc_method_handler,
                (False, True): grpc.unary_stream_rpc_method_handler,
                (True, False): grpc.stream_unary_rpc_method_handler,
                (True, True): grpc.stream_stream_rpc_method_handler}
        return make[(handler.request_streaming, handler.response_streaming)](
            refuse, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
