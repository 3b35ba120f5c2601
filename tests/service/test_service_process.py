"""The real process: `python -m server.main` (the clstream-server entry point) starts, trains, and on
SIGTERM or SIGINT (Ctrl-C) drains, writes its final checkpoint and exits 0."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clstream_proto import continual_learner_pb2_grpc as pb_grpc
from server.checkpoint import CheckpointStore
from cli_helpers import one_line_error
from service_helpers import train_batches

ROOT = Path(__file__).resolve().parents[2]


def launch(*args: str) -> tuple[subprocess.Popen, int]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CLSTREAM_")},
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "proto"), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-m", "server.main", "--port", "0", "--metrics-port", "0",
                                "--device", "cpu", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(process.stdout.readline()))
    reader.start()
    reader.join(180)
    if not line or "listening on" not in line[0]:
        process.kill()
        pytest.fail(f"the server did not come up: {line} {process.stderr.read()[-2000:]}")
    return process, int(line[0].split()[3].rsplit(":", 1)[1])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_drains_checkpoints_and_exits_zero(stream, tmp_path, signum):
    process, port = launch("--checkpoint-dir", str(tmp_path), "--checkpoint-every-batches", "0",
                           "--shutdown-grace-seconds", "2",  # the open health Watch holds shutdown that long
                           "--input-shape", "1", "8", "8", "--class-names", *stream.class_names)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.ContinualLearnerStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=30).status == health_pb2.HealthCheckResponse.SERVING
        acks = list(stub.Train(train_batches(stream, 0, limit=7), timeout=60))
        assert acks[-1].model_version == 7
        watch = health.Watch(health_pb2.HealthCheckRequest())
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        process.send_signal(signum)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert process.wait(60) == 0
        channel.close()
    finally:
        if process.poll() is None:
            process.kill()
    err = process.stderr.read()
    assert "stopped cleanly" in err and f"{signum.name}: shutting down" in err and "Traceback" not in err
    state, path = CheckpointStore(tmp_path).load_latest()
    assert state["applied_sequences"] == {"s": 7} and state["learner"]["version"] == 7


def test_bad_settings_exit_2_without_a_traceback():
    result = subprocess.run([sys.executable, "-m", "server.main", "--lr", "-3"], cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'proto'}"},
                            timeout=120)
    assert result.returncode == 2 and "lr" in result.stderr and "Traceback" not in result.stderr


def test_ordinary_mistakes_are_one_line_that_names_the_setting(tmp_path):
    """Exit 2 and one line: pydantic's errors without the input echoed back or its URL, a config file's syntax
    error with the file's name, the flag --selection needs, the JSON list a list variable takes."""
    (tmp_path / "server.toml").write_text("lr = [\n")
    for argv, words in [
        (["--config", str(tmp_path / "server.toml")], f"config file {tmp_path / 'server.toml'} is not valid TOML"),
        (["--port", "70000"], "invalid settings: port: Input should be less than or equal to 65535"),
        (["--lr", "abc"], "invalid settings: lr: Input should be a valid number"),
        (["--selection", "el2n"], "add --retain-ratio R (e.g. 0.05) or --retention per-bucket"),
    ]:
        line = one_line_error(["-m", "server.main", *argv])
        assert words in line and "input_value" not in line and "pydantic.dev" not in line, line
    line = one_line_error(["-m", "server.main"], env={**os.environ, "CLSTREAM_AUTH_TOKENS": "s3cret"})
    assert "CLSTREAM_AUTH_TOKENS is not valid JSON; a setting of several values takes a JSON list" in line, line


def test_a_busy_port_names_the_port_what_it_is_for_and_the_flag():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line_error(["-m", "server.main", "--port", "0", "--metrics-port", str(port), "--device", "cpu"])
        assert f"Prometheus metrics endpoint (/metrics) on 127.0.0.1:{port}: Address already in use" in line, line
        assert "--metrics-port" in line
        # gRPC's own C core logs a line of its own before ours: exit 2, no traceback, the port and the flag.
        done = subprocess.run([sys.executable, "-m", "server.main", "--port", str(port), "--metrics-port", "0",
                               "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"could not bind the gRPC port 127.0.0.1:{port}" in done.stderr and "with --port" in done.stderr
