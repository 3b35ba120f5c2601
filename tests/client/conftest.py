"""Fixtures for the client tests: a short digits stream and real servers on loopback ports."""
from __future__ import annotations

import pytest

from cl_engine import StreamOptions, build_stream
from client_helpers import STREAM, start_service
from test_service_security import pki  # noqa: F401  (the service tests' CA, server and client certificates)


@pytest.fixture(scope="session")
def small_stream():
    return build_stream("digits-rotated", StreamOptions(**STREAM))


@pytest.fixture
def service():
    """service(config, **settings) → a running in-process server; all are stopped at teardown."""
    running = []

    def _start(config=None, **settings):
        s = start_service(config, **settings)
        running.append(s)
        return s

    yield _start
    for s in running:
        s.stop(grace=0.5)


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server on a free loopback port, its data in tmp_path/redis; stopped at teardown."""
    from redis_support import RedisServer

    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()
