"""Docker HEALTHCHECK for clstream-server: asks the server's standard gRPC health service
(grpc.health.v1) whether it is SERVING. Exit 0 when it is; 1 when it answers anything else, does not
answer within the timeout, or cannot be reached.

    python healthcheck.py [HOST:PORT]

The target defaults to 127.0.0.1:$CLSTREAM_PORT (50051), the server inside the same container. When
the server serves TLS (CLSTREAM_TLS_CERT_FILE), the check does too, trusting
CLSTREAM_HEALTHCHECK_CA_FILE or else the server's own certificate (right for a self-signed one), with
CLSTREAM_HEALTHCHECK_SERVER_NAME as the name to verify (default: the certificate's); for mutual TLS
it presents CLSTREAM_HEALTHCHECK_CERT_FILE and CLSTREAM_HEALTHCHECK_KEY_FILE. Health needs no bearer
token (the server exempts it). Only grpcio and grpcio-health-checking are used: no extra binary.
"""
from __future__ import annotations

import os
import sys


def _read(name: str) -> bytes | None:
    path = os.environ.get(name)
    return open(path, "rb").read() if path else None


def check(target: str, timeout: float) -> tuple[bool, str]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    cert = os.environ.get("CLSTREAM_TLS_CERT_FILE")
    if cert:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read("CLSTREAM_HEALTHCHECK_CA_FILE") or open(cert, "rb").read(),
            private_key=_read("CLSTREAM_HEALTHCHECK_KEY_FILE"),
            certificate_chain=_read("CLSTREAM_HEALTHCHECK_CERT_FILE"))
        name = os.environ.get("CLSTREAM_HEALTHCHECK_SERVER_NAME")
        options = [("grpc.ssl_target_name_override", name)] if name else []
        channel = grpc.secure_channel(target, credentials, options)
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                              timeout=timeout)
        except grpc.RpcError as e:
            return False, f"{target}: {e.code().name}: {e.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{target}: {status}"


def main(argv: list[str]) -> int:
    target = argv[0] if argv else f"127.0.0.1:{os.environ.get('CLSTREAM_PORT', '50051')}"
    timeout = float(os.environ.get("CLSTREAM_HEALTHCHECK_TIMEOUT", "3"))
    try:
        ok, message = check(target, timeout)
    except Exception as e:  # a broken check must read as unhealthy, not crash with a traceback
        ok, message = False, f"{target}: {type(e).__name__}: {e}"
    print(message)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
