"""Shared by the whole suite. One intra-op thread: tests measure behaviour, not speed, and on a
shared 2-core machine OpenMP's spinning threads make small models many times slower under load.
And no CLSTREAM_* variable of a developer's shell leaks into a test: the tests decide every setting."""
import os

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _no_clstream_environment(monkeypatch):
    for key in list(os.environ):
        if key.startswith("CLSTREAM_"):
            monkeypatch.delenv(key)
