"""Optional bearer-token auth for every RPC, streaming ones included.

Each call must carry `authorization: Bearer <token>` metadata with one of the configured tokens;
otherwise it ends with UNAUTHENTICATED before its handler runs (a streaming call is refused before
any request is read). Tokens are compared as SHA-256 digests with hmac.compare_digest against every
configured token, so the time taken reveals neither the token's length nor how much of it matched.
Health checks are exempt by default: probes (kubelet, load balancers) carry no credentials, and
health reveals nothing but SERVING / NOT_SERVING.
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Callable, Iterable

import grpc

HEALTH_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class BearerTokenInterceptor(grpc.ServerInterceptor):
    def __init__(self, tokens: Iterable[str], exempt: frozenset[str] = HEALTH_METHODS,
                 on_reject: Callable[[str], None] | None = None):
        self._digests = [_digest(t) for t in tokens]
        if not self._digests:
            raise ValueError("BearerTokenInterceptor needs at least one token")
        self._exempt = exempt
        self._on_reject = on_reject

    def authorized(self, metadata) -> bool:
        values = [v for k, v in (metadata or ()) if k == "authorization"]
        if len(values) != 1 or not isinstance(values[0], str):
            return False
        scheme, _, token = values[0].partition(" ")
        given = _digest(token.strip())
        ok = False
        for digest in self._digests:  # every token, always: no early exit
            ok |= hmac.compare_digest(digest, given)
        return ok and scheme.lower() == "bearer"

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method in self._exempt or self.authorized(handler_call_details.invocation_metadata):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:  # unknown method: let gRPC answer UNIMPLEMENTED
            return None
        if self._on_reject is not None:
            self._on_reject(method)
        return _refusal(handler)


def _refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    message = "missing or invalid bearer token: send metadata `authorization: Bearer <token>`"

    def abort(_request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)
