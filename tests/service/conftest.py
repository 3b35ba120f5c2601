"""Fixtures for the service tests: a short digits stream, real servers on free loopback ports, stubs."""
from __future__ import annotations

import grpc
import pytest

from cl_engine import StreamOptions, build_stream
from clstream_proto import continual_learner_pb2_grpc as pb_grpc
from server.service import Service
from service_helpers import base_settings, channel_to


@pytest.fixture(scope="session")
def stream():
    """digits-rotated, 3 buckets of 150 training samples (15 batches of 10), 539 test samples each."""
    return build_stream("digits-rotated", StreamOptions(num_buckets=3, samples_per_bucket=150))


@pytest.fixture
def start():
    """start(**settings) → a running Service on a free loopback port; all are stopped at teardown."""
    running: list[Service] = []

    def _start(**overrides) -> Service:
        service = Service(base_settings(**overrides)).start()
        running.append(service)
        return service

    yield _start
    for service in running:
        service.stop(grace=0.5)


@pytest.fixture
def connect():
    """connect(service) → a ContinualLearner stub; channels are closed at teardown."""
    channels: list[grpc.Channel] = []

    def _connect(service: Service, credentials=None, **options) -> pb_grpc.ContinualLearnerStub:
        ch = channel_to(service, credentials, **options)
        channels.append(ch)
        return pb_grpc.ContinualLearnerStub(ch)

    yield _connect
    for ch in channels:
        ch.close()
