"""Shared by the whole suite. One intra-op thread: tests measure behaviour, not speed, and on a
shared 2-core machine OpenMP's spinning threads make small models many times slower under load.
And no CLSTREAM_* variable of a developer's shell leaks into a test: the tests decide every setting.

Tests marked `cuda` need a CUDA device: where torch.cuda.is_available() is False they are skipped with
that reason, unless `--require-cuda` is given (benchmarks/device_check.sh gives it on the GPU machine),
which makes them fail instead, so a GPU session cannot pass by skipping them. With CUDA_TESTS_DEVICE=cpu
they run on the CPU instead, a dry run of the tests themselves (tests/cuda_helpers.py)."""
import os

import pytest
import torch

from cuda_helpers import DEVICE

torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption("--require-cuda", action="store_true",
                     help="tests marked cuda fail, instead of being skipped, where no CUDA device is available")


def pytest_runtest_setup(item):
    if item.get_closest_marker("cuda") is None or torch.cuda.is_available() or DEVICE == "cpu":
        return
    reason = f"needs a CUDA device: torch.cuda.is_available() is False here (torch {torch.__version__})"
    if item.config.getoption("--require-cuda"):
        pytest.fail(f"{reason}, and --require-cuda was given", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _no_clstream_environment(monkeypatch):
    for key in list(os.environ):
        if key.startswith("CLSTREAM_"):
            monkeypatch.delenv(key)
