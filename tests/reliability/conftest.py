"""Fixtures for the reliability tests (crash, hostile input, load, slow clients).

They reuse the service and client tests' helpers (put on the path here) and write what they
measure as JSON under the pytest tmp dir (`figures`), printing a one-line summary each.
CLSTREAM_LONG_TESTS=1 turns on the longer variants (reliability_support.LONG)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for folder in ("service", "client"):
    path = str(HERE.parent / folder)
    if path not in sys.path:
        sys.path.insert(0, path)

from cl_engine import StreamOptions, build_stream  # noqa: E402
from client_helpers import STREAM  # noqa: E402


@pytest.fixture(scope="session")
def small_stream():
    """digits-rotated, 3 buckets × 200 training samples (20 batches of 10), 539 held-out each."""
    return build_stream("digits-rotated", StreamOptions(**STREAM))


@pytest.fixture(scope="session")
def figures_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reliability-figures")


@pytest.fixture
def figures(figures_dir):
    """figures(name, data) writes data as JSON to <tmp>/reliability-figures/<name>.json, prints it."""
    def _write(name: str, data: dict) -> Path:
        path = figures_dir / f"{name}.json"
        path.write_text(json.dumps(data, indent=2, default=str))
        print(f"\n[reliability] {name}: {json.dumps(data, default=str)[:1500]}\n  -> {path}")
        return path
    return _write
