"""Bearer-token auth on every RPC (streaming ones included) and TLS / mutual TLS."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from clstream_proto import continual_learner_pb2 as pb
from clstream_proto import continual_learner_pb2_grpc as pb_grpc
from server.auth import BearerTokenInterceptor
from client.local_server import LocalServer
from cli_helpers import one_line_error
from server.codec import encode_samples
from service_helpers import channel_to, eval_chunks, train_batches

TOKEN = "s3cret-token"


def calls(stub, channel, stream):
    """One call of every RPC; each returns normally when authorized."""
    x = stream.buckets[0].test.batch(torch.arange(4))[0]
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    return {
        "Train": lambda md: list(stub.Train(train_batches(stream, 0, limit=1), metadata=md)),
        "RegisterEvalSet": lambda md: stub.RegisterEvalSet(eval_chunks(stream, 0), metadata=md),
        "EndBucket": lambda md: stub.EndBucket(pb.EndBucketRequest(bucket=0), metadata=md),
        "Predict": lambda md: stub.Predict(pb.PredictRequest(samples=encode_samples(x)), metadata=md),
        "Evaluate": lambda md: stub.Evaluate(iter([pb.EvaluateChunk(samples=encode_samples(x), labels=[0] * 4)]),
                                             metadata=md),
        "GetStatus": lambda md: stub.GetStatus(pb.GetStatusRequest(), metadata=md),
        "Reflection": lambda md: list(reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=md)),
    }


@pytest.mark.parametrize("metadata", [
    None,
    (("authorization", "Bearer wrong"),),
    (("authorization", f"Bearer {TOKEN}x"),),
    (("authorization", f"Basic {TOKEN}"),),
    (("authorization", TOKEN),),
    (("authorization", f"Bearer {TOKEN}"), ("authorization", "Bearer wrong")),
    (("x-api-key", TOKEN),),
])
def test_every_rpc_refuses_a_missing_or_wrong_token(start, connect, stream, metadata):
    service = start(auth_tokens=[TOKEN, "another-token"])
    stub = connect(service)
    channel = channel_to(service)
    for name, call in calls(stub, channel, stream).items():
        with pytest.raises(grpc.RpcError) as e:
            call(metadata)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
        assert "bearer token" in e.value.details()
    good = (("authorization", f"Bearer {TOKEN}"),)
    status = stub.GetStatus(pb.GetStatusRequest(), metadata=good)
    assert not status.has_model and status.samples_trained == 0  # nothing of the refused calls was applied
    channel.close()


def test_a_right_token_opens_every_rpc_and_health_needs_none(start, connect, stream):
    service = start(auth_tokens=["another-token", TOKEN])
    stub = connect(service)
    channel = channel_to(service)
    for name, call in calls(stub, channel, stream).items():
        call((("authorization", f"bearer {TOKEN}"),))  # the scheme is case-insensitive
    status = stub.GetStatus(pb.GetStatusRequest(), metadata=(("authorization", "Bearer another-token"),))
    assert status.samples_trained == 10 and status.open_bucket == 1
    config = json.loads(status.config_json)  # the effective settings, secrets masked
    assert config["strategy"] == "replay" and config["host"] == "127.0.0.1" and TOKEN not in status.config_json
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    unknown = channel.unary_unary("/clstream.v1.ContinualLearner/NoSuchMethod")
    with pytest.raises(grpc.RpcError) as e:
        unknown(b"")
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    channel.close()


def test_token_comparison():
    interceptor = BearerTokenInterceptor(["a", "bb"])
    assert interceptor.authorized((("authorization", "Bearer a"),))
    assert interceptor.authorized((("authorization", "BEARER bb"),))
    assert not interceptor.authorized((("authorization", "Bearer "),))
    assert not interceptor.authorized((("authorization", "Bearer b"),))
    assert not interceptor.authorized(())
    assert not interceptor.authorized(None)
    with pytest.raises(ValueError):
        BearerTokenInterceptor([])


def test_tokens_from_a_file(start, connect, tmp_path):
    path = tmp_path / "tokens"
    path.write_text("\n  file-token  \n\n")
    stub = connect(start(auth_token_file=path))
    assert stub.GetStatus(pb.GetStatusRequest(), metadata=(("authorization", "Bearer file-token"),))
    with pytest.raises(grpc.RpcError):
        stub.GetStatus(pb.GetStatusRequest())


def test_a_token_source_without_a_usable_token_refuses_to_start(tmp_path):
    """Auth fails closed, through the real clstream-server: exit 2 and one line naming the source."""
    blank = tmp_path / "tokens"
    blank.write_text("\n   \n\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLSTREAM_")}
    line = one_line_error(["-m", "server.main", "--auth-token-file", str(blank)], env=env)
    assert f"auth_token_file {blank} holds no token" in line, line
    for tokens in ('[""]', '["good", "   "]'):
        line = one_line_error(["-m", "server.main"], env={**env, "CLSTREAM_AUTH_TOKENS": tokens})
        assert "auth_tokens: token" in line and "is empty" in line and "CLSTREAM_AUTH_TOKENS" in line, line
    line = one_line_error(["-m", "server.main"], env={**env, "CLSTREAM_AUTH_TOKENS": "[]"})
    assert "auth_tokens is set but holds no token" in line, line
    line = one_line_error(["-m", "server.main", "--auth-token-file", str(tmp_path / "missing")], env=env)
    assert f"auth_token_file {tmp_path / 'missing'}: cannot read it" in line, line


def test_a_token_with_spaces_around_it_is_trimmed(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLSTREAM_")}
    with LocalServer(["--device", "cpu", "--auth-tokens", "  spaced-token \t"], log_path=tmp_path / "log",
                     env=env) as server:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.ContinualLearnerStub(channel)
            assert not stub.GetStatus(pb.GetStatusRequest(), metadata=(("authorization", "Bearer spaced-token"),),
                                      timeout=10).has_model
            for bad in ("Bearer", "Bearer ", "Bearer spaced-token x"):
                with pytest.raises(grpc.RpcError) as e:
                    stub.GetStatus(pb.GetStatusRequest(), metadata=(("authorization", bad),), timeout=10)
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, bad


def test_tokens_are_compared_in_constant_time():
    """Every configured token's SHA-256 digest is compared with hmac.compare_digest, with no early exit:
    the time taken says neither which token matched nor how much of it."""
    import hmac
    from unittest import mock

    interceptor = BearerTokenInterceptor(["first", "second", "third"])
    with mock.patch("server.auth.hmac.compare_digest", wraps=hmac.compare_digest) as compare:
        assert interceptor.authorized((("authorization", "Bearer first"),))
        assert compare.call_count == 3 and all(len(c.args[0]) == len(c.args[1]) == 32 for c in compare.call_args_list)
        compare.reset_mock()
        assert not interceptor.authorized((("authorization", "Bearer f"),))
        assert compare.call_count == 3


# -- TLS ----------------------------------------------------------------------------------------------

def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Two CAs; a server certificate (localhost, 127.0.0.1) and a client certificate from the first,
    a client certificate from the second."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2", "-subj",
                 f"/CN={ca}", cwd=d)
    (d / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, ca, ext in (("server", "ca", "server.ext"), ("client", "ca", "client.ext"),
                          ("rogue", "other-ca", "client.ext")):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", ext, cwd=d)
    return d


def creds(pki, ca="ca", client=None):
    key = (pki / f"{client}.key").read_bytes() if client else None
    chain = (pki / f"{client}.pem").read_bytes() if client else None
    return grpc.ssl_channel_credentials((pki / f"{ca}.pem").read_bytes(), key, chain)


OVERRIDE = {"grpc.ssl_target_name_override": "localhost"}


def status_over(connect, service, credentials):
    stub = connect(service, credentials, **OVERRIDE) if credentials else connect(service)
    return stub.GetStatus(pb.GetStatusRequest(), timeout=10)


def test_tls_serves_clients_that_trust_its_ca_and_no_others(start, connect, pki):
    service = start(tls_cert_file=pki / "server.pem", tls_key_file=pki / "server.key")
    assert not status_over(connect, service, creds(pki)).has_model
    for bad in (creds(pki, ca="other-ca"), None):  # a wrong CA; plaintext
        with pytest.raises(grpc.RpcError) as e:
            status_over(connect, service, bad)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate_from_its_ca(start, connect, pki, stream):
    service = start(tls_cert_file=pki / "server.pem", tls_key_file=pki / "server.key",
                    tls_client_ca_file=pki / "ca.pem", auth_tokens=[TOKEN])
    stub = connect(service, creds(pki, client="client"), **OVERRIDE)
    md = (("authorization", f"Bearer {TOKEN}"),)
    assert len(list(stub.Train(train_batches(stream, 0, limit=2), metadata=md, timeout=30))) == 2
    with pytest.raises(grpc.RpcError) as e:  # TLS and tokens stack: the certificate alone is not enough
        stub.GetStatus(pb.GetStatusRequest(), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    for bad in (creds(pki), creds(pki, client="rogue")):  # no client certificate; one from another CA
        with pytest.raises(grpc.RpcError) as e:
            connect(service, bad, **OVERRIDE).GetStatus(pb.GetStatusRequest(), metadata=md, timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_server_streaming_call_is_refused_before_its_first_response():
    """The service's only server-streaming RPC is health Watch, exempt by default; without the exemption
    the interceptor refuses it like any other call."""
    from concurrent import futures

    from grpc_health.v1 import health

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2),
                         interceptors=[BearerTokenInterceptor([TOKEN], exempt=frozenset())])
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as e:
            next(stub.Watch(health_pb2.HealthCheckRequest(), timeout=10))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and "bearer token" in e.value.details()
        watch = stub.Watch(health_pb2.HealthCheckRequest(), metadata=(("authorization", f"Bearer {TOKEN}"),))
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
    finally:
        channel.close()
        server.stop(0)
