"""Call budgets: no client's calls can lock another client out, and health is never refused.

Every RPC but a health Check belongs to one budget, a count of calls running at once:

- `max_open_streams`: long-lived streams (Train, RegisterEvalSet, WatchModel, health Watch, reflection), and at most
  `max_streams_per_client` of them per client: per bearer token when auth is on, per peer address
  (the IP, not the port) otherwise;
- `max_concurrent_predictions`: unary serving (Predict, Evaluate, GetStatus);
- `max_admin_calls`: the rest (EndBucket, ForgetStream, and any other method of the service).

A call over its budget ends at once with RESOURCE_EXHAUSTED naming the setting to raise. The
server's handler threads are the budgets' sum plus `worker_threads` spare ones, so the calls the
budgets admit can never take the thread a health check, or a refusal, needs.
"""
from __future__ import annotations

import hashlib
import threading
from typing import Callable

import grpc

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
STREAMS, SERVING, ADMIN = "max_open_streams", "max_concurrent_predictions", "max_admin_calls"
PER_CLIENT = "max_streams_per_client"
LABELS = {STREAMS: "streams", SERVING: "serving", ADMIN: "admin", PER_CLIENT: "per_client"}  # metric labels
_KINDS = {
    "/clstream.v1.ContinualLearner/Train": STREAMS,
    "/clstream.v1.ContinualLearner/RegisterEvalSet": STREAMS,
    "/clstream.v1.ContinualLearner/WatchModel": STREAMS,
    "/grpc.health.v1.Health/Watch": STREAMS,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": STREAMS,
    "/clstream.v1.ContinualLearner/Predict": SERVING,
    "/clstream.v1.ContinualLearner/Evaluate": SERVING,
    "/clstream.v1.ContinualLearner/GetStatus": SERVING,
}
_WHAT = {STREAMS: "streams (Train, RegisterEvalSet, WatchModel, health Watch, reflection) are open",
         SERVING: "Predict/Evaluate/GetStatus calls are running",
         ADMIN: "admin calls (EndBucket, ForgetStream, ...) are running"}


def budget_of(method: str) -> str | None:
    """The budget a method counts against; None for a health Check, which counts against none."""
    return None if method == HEALTH_CHECK else _KINDS.get(method, ADMIN)


def client_of(metadata, peer: str) -> str:
    """Who a call comes from: its bearer token (hashed; auth has checked it already) or, without one,
    the peer's address without its port (`ipv4:127.0.0.1:5555` → `127.0.0.1`)."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            return "token " + hashlib.sha256(value.partition(" ")[2].strip().encode()).hexdigest()[:12]
    kind, _, address = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        address = address.rsplit(":", 1)[0]
    return f"peer {address.strip('[]') or peer}"


class CallBudgets(grpc.ServerInterceptor):
    def __init__(self, limits: dict[str, int], per_client: int,
                 on_refuse: Callable[[str, str], None] | None = None):
        self.limits = dict(limits)
        self.per_client = per_client
        self._on_refuse = on_refuse
        self._lock = threading.Lock()
        self._open = {name: 0 for name in self.limits}
        self._streams_by_client: dict[str, int] = {}

    def threads_needed(self) -> int:
        return sum(self.limits.values())

    def open_calls(self) -> dict[str, int]:
        with self._lock:
            return dict(self._open)

    def _admit(self, budget: str, client: str) -> tuple[str, str] | None:
        """Take a place in `budget` (and in the client's streams); if none is free, the limit that refused
        and the refusal's message."""
        with self._lock:
            if self._open[budget] >= self.limits[budget]:
                return budget, (f"{self.limits[budget]} {_WHAT[budget]}, the most this server takes at once "
                                f"({budget}); retry with backoff")
            if budget == STREAMS:
                mine = self._streams_by_client.get(client, 0)
                if mine >= self.per_client:
                    return PER_CLIENT, (f"{client} already has {mine} streams open, the most one client may hold "
                                        f"({PER_CLIENT}); end one, or retry with backoff")
                self._streams_by_client[client] = mine + 1
            self._open[budget] += 1
            return None

    def _release(self, budget: str, client: str) -> None:
        with self._lock:
            self._open[budget] -= 1
            if budget == STREAMS:
                left = self._streams_by_client[client] - 1
                if left:
                    self._streams_by_client[client] = left
                else:
                    del self._streams_by_client[client]

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        budget = budget_of(method)
        if handler is None or budget is None:
            return handler
        metadata = handler_call_details.invocation_metadata

        def enter(context) -> Callable[[], None]:
            """Admit the call or abort it; returns the release, safe to call more than once (it runs from
            the handler and from gRPC's termination callback: a suspended generator's finally may never run)."""
            client = client_of(metadata, context.peer() or "")
            refusal = self._admit(budget, client)
            if refusal is not None:
                limit, message = refusal
                if self._on_refuse is not None:
                    self._on_refuse(method, limit)
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
            once = threading.Lock()
            released = []

            def release() -> None:
                with once:
                    if released:
                        return
                    released.append(True)
                self._release(budget, client)

            context.add_callback(release)
            return release

        return _wrapped(handler, enter)


def _wrapped(handler: grpc.RpcMethodHandler, enter) -> grpc.RpcMethodHandler:
    """`handler` with `enter(context)` before its behaviour and the release it returns after."""
    if handler.response_streaming:
        inner = handler.stream_stream if handler.request_streaming else handler.unary_stream

        def behaviour(request, context):
            release = enter(context)
            try:
                yield from inner(request, context)
            finally:
                release()
    else:
        inner = handler.stream_unary if handler.request_streaming else handler.unary_unary

        def behaviour(request, context):
            release = enter(context)
            try:
                return inner(request, context)
            finally:
                release()

    make = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}
    return make[(handler.request_streaming, handler.response_streaming)](
        behaviour, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
