"""Every limit is a setting with a flag, a CLSTREAM_* variable and its default in `clstream-server
--help`, and a row of RELIABILITY.md's limits table, whose tests exist."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from server.settings import ServerSettings, build_parser, settings_from

ROOT = Path(__file__).resolve().parents[2]
LIMITS = ("max_message_bytes", "max_batch_samples", "max_eval_samples", "max_eval_total_samples",
          "max_eval_total_bytes", "max_image_bytes", "max_image_pixels", "max_message_pixels", "max_sample_values",
          "max_classes", "max_model_bytes", "max_streams", "stream_mark_max_idle_seconds", "max_buckets",
          "queue_size", "enqueue_timeout_seconds", "max_concurrent_predictions", "max_open_streams",
          "max_streams_per_client", "max_admin_calls", "stream_idle_timeout_seconds", "keepalive_seconds",
          "keepalive_min_ping_seconds", "worker_threads")


def limits_table() -> str:
    text = (ROOT / "RELIABILITY.md").read_text()
    start = text.index("## Limits")
    return text[start:text.index("\n## ", start + 1)]


def test_every_limit_has_a_row_in_reliability_md_whose_tests_exist():
    table = limits_table()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    named = {name for row in rows for name in re.findall(r"`([a-z_]+)`", row)}
    assert set(LIMITS) <= named, sorted(set(LIMITS) - named)
    tests = set(re.findall(r"`(test_[a-z0-9_]+)`", table))
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    missing = [t for t in sorted(tests) if f"def {t}(" not in sources]
    assert tests and not missing, missing


def test_every_limit_is_a_flag_with_its_default_in_help():
    done = subprocess.run([sys.executable, "-m", "server.main", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0
    help_text = re.sub(r"\s+", " ", done.stdout)
    for name in LIMITS:
        default = ServerSettings.model_fields[name].default
        flag = "--" + name.replace("_", "-")
        match = re.search(re.escape(f"{flag} {name.upper()} ") + r"(.*?)(?= --|$)", help_text)
        assert match, flag
        assert f"(default: {default})" in match.group(1), (flag, match.group(1))


@pytest.mark.parametrize("name", LIMITS)
def test_every_limit_reads_its_clstream_variable_and_its_flag(name, monkeypatch):
    default = ServerSettings.model_fields[name].default
    value = type(default)(default * 2)
    monkeypatch.setenv(f"CLSTREAM_{name.upper()}", str(value))
    assert getattr(settings_from(None), name) == value
    flag_value = type(default)(default * 3)
    args = vars(build_parser().parse_args([f"--{name.replace('_', '-')}", str(flag_value)]))
    assert getattr(settings_from(None, **args), name) == flag_value  # the flag wins over the variable
