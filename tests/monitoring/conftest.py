"""Fixtures for the monitoring tests: Debian's Prometheus tools (a failure when missing in CI, a
reported skip elsewhere)."""
from __future__ import annotations

import pytest

from monitoring_support import prometheus_tool


@pytest.fixture(scope="session")
def promtool() -> str:
    return prometheus_tool("promtool")


@pytest.fixture(scope="session")
def prometheus() -> str:
    return prometheus_tool("prometheus")
