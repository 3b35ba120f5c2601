"""The server assembled: settings → checkpoint restore → training worker → gRPC (the learner
service, health, reflection; bearer-token auth and TLS when configured) → Prometheus endpoint.

Health is NOT_SERVING until the checkpoint is loaded and the port is up, SERVING while running,
and NOT_SERVING again from the first moment of shutdown. Three names: "" (the server) and
"clstream.v1.ContinualLearner" (Predict, Evaluate, GetStatus) stay SERVING while checkpoints fail;
TRAINING_HEALTH, "clstream.v1.Training", is NOT_SERVING while the training state cannot be made
durable (a checkpoint failed and no later one succeeded) or the learner process is gone. `stop` is
the graceful path: refuse new calls, give in-flight ones `shutdown_grace_seconds`, let the worker
apply what it already queued, write the final checkpoint, and say whether the final state is durable.
"""
from __future__ import annotations

import logging
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cl_engine.drift import PageHinkley
from clstream_proto import continual_learner_pb2 as pb
from clstream_proto import continual_learner_pb2_grpc as pb_grpc

from .auth import BearerTokenInterceptor
from .budgets import ADMIN, SERVING, STREAMS, CallBudgets
from .budgets import LABELS as BUDGET_LABELS
from .checkpoint import CheckpointStore
from .eval_sets import EvalSetBudget
from .learner_process import LearnerProcess
from .metrics import ServerMetrics, start_metrics_server
from .replica import Follower, ReplicaGuard
from .schema import Schema, SchemaHolder
from .servicer import ContinualLearnerServicer
from .settings import ServerSettings
from .snapshot import SnapshotHolder
from .promotion import PromotionOptions
from .watch import ModelWatch
from .worker import TrainingWorker, WorkerOptions

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ContinualLearner"].full_name
TRAINING_HEALTH = "clstream.v1.Training"
HEALTH_NAMES = ("", SERVICE_NAME, TRAINING_HEALTH)
METHODS = frozenset(m.name for m in pb.DESCRIPTOR.services_by_name["ContinualLearner"].methods)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    if settings.tls_cert_file is None:
        return None
    key, cert = settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes()
    ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


class Service:
    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.metrics = ServerMetrics()
        fixed = (Schema.validated(settings.class_names, settings.input_shape, "settings")
                 if settings.class_names is not None else None)
        self.schemas = SchemaHolder(fixed)
        self.snapshots = SnapshotHolder()
        self.checkpoints = (CheckpointStore(settings.checkpoint_dir, settings.checkpoint_keep)
                            if settings.checkpoint_dir is not None else None)
        options = WorkerOptions(
            settings.learner_config(), queue_size=settings.queue_size,
            snapshot_interval=settings.snapshot_interval_seconds, max_streams=settings.max_streams,
            stream_mark_max_idle_seconds=settings.stream_mark_max_idle_seconds,
            checkpoint_dir=settings.checkpoint_dir, checkpoint_keep=settings.checkpoint_keep,
            checkpoint_every_batches=settings.checkpoint_every_batches,
            checkpoint_every_seconds=settings.checkpoint_every_seconds,
            drift=PageHinkley(settings.drift_delta, settings.drift_threshold, settings.drift_min_samples,
                              settings.drift_alpha),
            eval_budget=EvalSetBudget(settings.max_eval_total_samples, settings.max_eval_total_bytes),
            promotion=PromotionOptions(settings.guarded_promotion, settings.promotion_every_batches,
                                       settings.promotion_tolerance),
            rollback_keep=settings.rollback_keep, decode_threads=settings.decode_threads)
        self.replica = settings.follow is not None
        if self.replica:  # a prediction replica: follows the learner's published versions, trains nothing
            self.worker = Follower(settings, self.schemas, self.snapshots, self.metrics, on_model=self._replica_ready)
        elif settings.learner_process:
            self.worker = LearnerProcess(options, self.schemas, self.snapshots, self.metrics,
                                         log_level=logging.getLevelName(settings.log_level.upper()),
                                         nice=settings.learner_nice, on_exit=self._learner_gone,
                                         on_durability=self._durability)
        else:
            self.worker = TrainingWorker(options, self.schemas, self.snapshots, self.metrics, self.checkpoints,
                                         on_durability=self._durability)
        self._durable = True  # whether the training state can be made durable (the last checkpoint attempt worked)
        self.resumed_from = None
        if self.checkpoints is not None:
            loaded = self.checkpoints.load_latest()
            self.metrics.corrupt_checkpoints.inc(len(self.checkpoints.skipped))
            if loaded is not None:
                state, path = loaded
                self.worker.restore(state, path)
                self.resumed_from = path
                log.info("resumed from %s", path)
            elif self.checkpoints.corrupt_files():  # found now or on an earlier start: the refusal holds
                if not settings.start_empty_on_corrupt:
                    reasons = "; ".join(f"{s.path.name}: {s.reason}" for s in self.checkpoints.skipped)
                    raise ValueError(
                        f"every checkpoint in {settings.checkpoint_dir} is corrupt ({reasons or 'set aside earlier'}"
                        f"); they are kept as *.corrupt. Put a good checkpoint into the directory, or start empty "
                        "on purpose with --start-empty-on-corrupt")
                log.warning("every checkpoint in %s is corrupt; starting empty, as --start-empty-on-corrupt asks",
                            settings.checkpoint_dir)
        self.health = health.HealthServicer()
        for name in HEALTH_NAMES:
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.server: grpc.Server | None = None
        self.servicer: ContinualLearnerServicer | None = None
        self.port = 0
        self.metrics_port = 0
        self._metrics_http = None
        self._serving = False
        if not self.replica:  # a replica trains nothing: it exports its own gauges (server/replica.py)
            self.metrics.watch(self.worker.status, self._live)

    def _live(self) -> dict:
        return {"serving_version": self.snapshots.version, "queue_depth": self.worker.queue_depth,
                "queue_capacity": self.worker.queue_size, "serving": self._serving}

    def _learner_gone(self, why: str) -> None:
        """The learner process died: NOT_SERVING, so that an orchestrator restarts the server (it resumes
        from the last checkpoint); until then Predict answers from the last snapshot."""
        self._serving = False
        for name in HEALTH_NAMES:
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    def _replica_ready(self) -> None:
        """A replica got a model: it answers from now on (training health stays NOT_SERVING: it trains nothing)."""
        if self._serving:
            for name in ("", SERVICE_NAME):
                self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def _durability(self, durable: bool, why: str) -> None:
        """The worker's checkpoints started failing (or work again): training health follows."""
        self._durable = durable
        if self._serving and not self.replica:
            self.health.set(TRAINING_HEALTH, health_pb2.HealthCheckResponse.SERVING if durable
                            else health_pb2.HealthCheckResponse.NOT_SERVING)

    def _count_rejection(self, method: str) -> None:
        self._count_refusal(method, "UNAUTHENTICATED")

    def _count_budget_refusal(self, method: str, limit: str) -> None:
        self.metrics.calls_refused.labels(BUDGET_LABELS[limit]).inc()
        self._count_refusal(method, "RESOURCE_EXHAUSTED")

    def _count_refusal(self, method: str, code: str) -> None:
        name = method.rsplit("/", 1)[-1]
        self.metrics.requests.labels(name if name in METHODS else "other", code).inc()

    def start(self) -> "Service":
        s = self.settings
        self.worker.start()
        tokens = s.tokens()
        self.budgets = CallBudgets({STREAMS: s.max_open_streams, SERVING: s.max_concurrent_predictions,
                                    ADMIN: s.max_admin_calls}, s.max_streams_per_client,
                                   on_refuse=self._count_budget_refusal)
        for budget, label in BUDGET_LABELS.items():
            self.metrics.calls_refused.labels(label)
            if budget in self.budgets.limits:
                self.metrics.calls_open.labels(label).set_function(lambda b=budget: self.budgets.open_calls()[b])
                self.metrics.calls_limit.labels(label).set(self.budgets.limits[budget])
        # auth first: a call without a good token is refused before it takes a place in a budget
        interceptors = ([BearerTokenInterceptor(tokens, on_reject=self._count_rejection)] if tokens else [])
        if self.replica:  # before the budgets: a refused call takes no place in them
            interceptors.append(ReplicaGuard(s.follow, on_refuse=lambda name: self._count_refusal(
                name, "FAILED_PRECONDITION")))
        interceptors.append(self.budgets)
        options = [("grpc.max_receive_message_length", s.max_message_bytes),
                   ("grpc.max_send_message_length", s.max_message_bytes),
                   ("grpc.so_reuseport", 0),
                   ("grpc.keepalive_time_ms", int(s.keepalive_seconds * 1000)),
                   ("grpc.keepalive_timeout_ms", 20_000),
                   ("grpc.keepalive_permit_without_calls", 1),
                   ("grpc.http2.min_ping_interval_without_data_ms", int(s.keepalive_min_ping_seconds * 1000)),
                   ("grpc.http2.max_ping_strikes", 2)]
        # No maximum_concurrent_rpcs: the budgets refuse calls, and the threads beyond their sum
        # (worker_threads) answer health checks and refusals, so a health check never waits behind them.
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.budgets.threads_needed() + s.worker_threads,
                                                             thread_name_prefix="clstream-rpc"),
                                  interceptors=interceptors, options=options)
        self.watch = ModelWatch(self.snapshots, self.schemas, s.model, s.max_message_bytes)
        self.servicer = ContinualLearnerServicer(s, self.schemas, self.worker, self.snapshots, self.metrics,
                                                 watch=self.watch)
        pb_grpc.add_ContinualLearnerServicer_to_server(self.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        address = _address(s.host, s.port)
        credentials = server_credentials(s)
        try:
            self.port = (self.server.add_secure_port(address, credentials) if credentials
                         else self.server.add_insecure_port(address))
        except RuntimeError as e:
            self.worker.stop()
            raise RuntimeError(f"could not bind the gRPC port {address}: {e}; is another server on it? Choose another "
                               "port with --port (0: a free one)") from None
        self.server.start()
        if s.metrics_enabled:
            try:
                self._metrics_http, self.metrics_port = start_metrics_server(self.metrics.registry, s.metrics_host,
                                                                             s.metrics_port)
            except OSError as e:
                self.server.stop(0).wait()
                self.worker.stop()
                raise RuntimeError(f"could not serve the Prometheus metrics endpoint (/metrics) on "
                                   f"{_address(s.metrics_host, s.metrics_port)}: {e.strerror or e}; choose another "
                                   "port with --metrics-port (0: a free one) or turn the endpoint off with "
                                   "--no-metrics-enabled") from None
        self._serving = True
        if not self.replica or self.snapshots.current() is not None:  # a replica: once it has a model
            for name in ("", SERVICE_NAME):
                self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._durability(self._durable, "")
        log.info("serving %s on %s%s", SERVICE_NAME, _address(s.host, self.port), " (TLS)" if credentials else "")
        return self

    def stop(self, grace: float | None = None) -> dict:
        """Graceful shutdown: NOT_SERVING, refuse new calls, drain, final checkpoint. Returns whether the
        final state is durable: {"durable", "error", "batches_lost", "last_checkpoint", "checkpoints"}."""
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        self._serving = False
        self.health.enter_graceful_shutdown()
        if self.server is not None:
            self.watch.close()  # replicas' watches end now rather than hold the grace period
            self.server.stop(grace).wait()
            self.servicer.close()
        final = self.worker.stop(timeout=max(60.0, grace))
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
            self._metrics_http = None
        return final

    def wait(self, timeout: float | None = None) -> bool:
        return self.server.wait_for_termination(timeout)
