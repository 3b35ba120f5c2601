"""Helpers for the client tests: the small learner they all use and servers on loopback ports.

The service tests' helpers are reused, not copied: tests/service is put on the path for them."""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))

from cl_engine import LearnerConfig  # noqa: E402
from server.service import Service  # noqa: E402
from service_helpers import base_settings  # noqa: E402  (loopback, free ports, cpu)

# 3 buckets × 200 training samples (20 batches of 10 per pass), 539 held-out samples each.
STREAM = dict(num_buckets=3, samples_per_bucket=200)
STREAM_FLAGS = ["--buckets", "3", "--samples-per-bucket", "200"]


def learner(**overrides) -> LearnerConfig:
    """A small replay learner; every comparison with the in-process run uses it."""
    values = dict(strategy="replay", model="mlp", lr=0.1, buffer_capacity=150, seed=3, device="cpu")
    values.update(overrides)
    return LearnerConfig(**values)


def start_service(config: LearnerConfig | None = None, **settings) -> Service:
    """The real gRPC server, in this process, on a free loopback port."""
    values = config.model_dump() if config is not None else {}
    return Service(base_settings(**values, **settings)).start()


def target(service: Service) -> str:
    return f"127.0.0.1:{service.port}"


def clean_environment() -> dict[str, str]:
    """This environment without CLSTREAM_* variables, for server processes: the tests decide."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CLSTREAM_")}
