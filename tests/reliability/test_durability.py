""""Done" means durable, under the faults a deployed server meets: a full checkpoint disk, a
read-only checkpoint folder before a SIGTERM, a restart between a bucket's last ack and its
EndBucket, corrupt and incomplete checkpoints, a second dataset sent to a server past its buckets.

Each test runs the real clstream-server (client.local_server) and the real replay client (the CLI's
`stream` command, or client.replay where the fault must hit mid-stream), and asserts the one
invariant: whatever EndBucket or the client reported done survives a kill -9 and restart, and a
rerun of the same client command ends with exactly the stream's samples and the matrix of the
uninterrupted in-process run.

The checkpoint folder lies on a Volume: a small tmpfs when the tests run as root (CI does), which
is filled up or remounted read-only for real; otherwise a plain folder whose server fails its
checkpoint writes with the same OS errors (ENOSPC, EROFS) while a fault file says so
(DURABILITY_TEST_NO_TMPFS=1 chooses that as root too).
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cl_engine import run_stream
from client.api import Client, ServiceError
from client.cli import main as cli
from client.demo import server_flags
from client.local_server import LocalServer, free_port
from client.replay import Replay, ReplayOptions
from client_helpers import STREAM_FLAGS, clean_environment, learner
from server.checkpoint import decode, encode

TOTAL = 60  # 3 buckets × 20 batches of 10
FAULT_HOOK = """
# sitecustomize for a FaultyServer: every process of it (the learner process too) fails its
# checkpoint writes with the errno named in the fault file, while that file exists.
import errno, os
from pathlib import Path
from server import checkpoint
save = checkpoint.CheckpointStore.save
def save_unless_faulty(self, state):
    fault = Path(os.environ["DURABILITY_TEST_FAULT_FILE"])
    if fault.exists():
        code = getattr(errno, fault.read_text().strip())
        raise OSError(code, os.strerror(code), str(self.directory))
    return save(self, state)
checkpoint.CheckpointStore.save = save_unless_faulty
"""


class FaultyServer(LocalServer):
    """The real server, with its checkpoint writes failing while the fault file names an errno."""

    def __init__(self, *args, fault_file: Path, **kwargs):
        super().__init__(*args, **kwargs)
        self.fault_file = fault_file
        self.hook = fault_file.parent / "fault-hook"
        self.hook.mkdir(exist_ok=True)
        (self.hook / "sitecustomize.py").write_text(FAULT_HOOK)

    def environment(self) -> dict[str, str]:
        env = super().environment()
        return {**env, "PYTHONPATH": os.pathsep.join([str(self.hook), env["PYTHONPATH"]]),
                "DURABILITY_TEST_FAULT_FILE": str(self.fault_file)}


class Volume:
    """The checkpoint folder's file system, which a test fills up or makes read-only."""

    def __init__(self, root: Path, size: str = "16m"):
        self.mount = root / "volume"
        self.mount.mkdir()
        self.path = self.mount / "ckpt"
        self.fault_file = root / "fault"
        mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(self.mount)]
        self.tmpfs = (os.geteuid() == 0 and not os.environ.get("DURABILITY_TEST_NO_TMPFS")
                      and subprocess.run(mount, capture_output=True).returncode == 0)
        self.path.mkdir()

    def server(self, args: list[str], **kwargs) -> LocalServer:
        kwargs.setdefault("env", clean_environment())
        if self.tmpfs:
            return LocalServer(args, **kwargs)
        return FaultyServer(args, fault_file=self.fault_file, **kwargs)

    def fill(self) -> None:
        """No space left: a filler file takes every free block."""
        if not self.tmpfs:
            self.fault_file.write_text("ENOSPC")
            return
        with open(self.mount / "filler", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * (1 << 16))
                    f.flush()
            except OSError as e:
                assert e.errno == errno.ENOSPC

    def empty(self) -> None:
        (self.mount / "filler").unlink(missing_ok=True)
        self.fault_file.unlink(missing_ok=True)

    def read_only(self) -> None:
        if not self.tmpfs:
            self.fault_file.write_text("EROFS")
            return
        subprocess.run(["mount", "-o", "remount,ro", str(self.mount)], check=True)

    def writable(self) -> None:
        if self.tmpfs:
            subprocess.run(["mount", "-o", "remount,rw", str(self.mount)], check=True)
        self.fault_file.unlink(missing_ok=True)

    def close(self) -> None:
        if self.tmpfs:
            subprocess.run(["umount", "-l", str(self.mount)], check=False)


@pytest.fixture
def volume(tmp_path):
    v = Volume(tmp_path)
    yield v
    v.close()


@pytest.fixture(scope="module")
def reference(small_stream):
    return run_stream(small_stream, learner(), batch_size=10, epochs=1, progress=False)


class Servers:
    """Server processes on one port and checkpoint folder, one after the other (kill -9, restart)."""

    def __init__(self, volume: Volume, tmp: Path, extra: list[str] = ()):
        self.volume, self.tmp, self.port = volume, tmp, free_port()
        self.args = server_flags(learner()) + ["--checkpoint-dir", str(volume.path), *extra]
        self.all: list[LocalServer] = []

    @property
    def current(self) -> LocalServer:
        return self.all[-1]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, *more: str) -> LocalServer:
        server = self.volume.server(self.args + list(more), port=self.port,
                                    log_path=self.tmp / f"server-{len(self.all)}.log")
        self.all.append(server.start())
        return server

    def restart(self) -> LocalServer:
        """kill -9, then start again on the same folder."""
        self.current.kill()
        return self.start()

    def log(self, i: int = -1) -> str:
        return self.all[i].log_path.read_text(errors="replace")

    def stop_all(self) -> None:
        for s in self.all:
            s.stop()


def stream_command(target: str, report: Path, dataset: str = "digits-rotated") -> list[str]:
    return ["stream", "--target", target, "--dataset", dataset, *STREAM_FLAGS, "--quiet", "--no-figures",
            "--query-every", "0", "--durable-retries", "1", "--reconnect-timeout", "60", "--report", str(report)]


def health(target: str, service: str) -> str:
    with grpc.insecure_channel(target) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


def gauge(server: LocalServer, name: str) -> float:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as page:
        for line in page.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def assert_exact(target: str, reference: dict) -> None:
    """Exactly the stream's samples, once each, and the uninterrupted run's matrix."""
    with Client(target) as client:
        status = client.status()
    assert status.samples_trained == 3 * 200 and status.batches_trained == TOTAL and status.open_bucket == 3
    np.testing.assert_allclose(status.accuracy_matrix, reference["accuracy_matrix"], rtol=0, atol=1e-9)
    assert status.checkpoint_error == "" and status.batches_since_checkpoint == 0


def rerun(servers: Servers, tmp: Path, reference: dict, name: str = "rerun") -> dict:
    """kill -9, restart, run the same client command again: exit 0, durable, exact."""
    servers.restart()
    assert cli(stream_command(servers.target, tmp / name)) == 0
    report = json.loads((tmp / name / "report.json").read_text())
    assert report["durable"] and Path(report["final_checkpoint"]).parent == servers.volume.path
    assert_exact(servers.target, reference)
    return report


def replay(target: str, stream, on_ack=None, client_class=Client, **options) -> Replay:
    values = dict(progress=False, query_every=0, reconnect_timeout=60, durable_retries=1)
    return Replay(client_class(target), stream, ReplayOptions(**{**values, **options}), on_ack=on_ack)


class Enough(Exception):
    pass


def stop_at(sequence: int):
    """An on_ack hook that ends the replay (as a client that stops) once `sequence` is acknowledged."""
    def hook(ack):
        if ack.sequence >= sequence:
            raise Enough
    return hook


def play_until(target: str, stream, sequence: int) -> Replay:
    job = replay(target, stream, on_ack=stop_at(sequence), max_in_flight=1)
    with pytest.raises(Enough):
        job.run()
    return job


def test_a_full_disk_fails_end_bucket_and_the_client_and_loses_nothing_reported_done(
        volume, tmp_path, small_stream, reference, capsys):
    # A write due after every batch; one checkpoint kept, so the pruning before a write frees nothing.
    servers = Servers(volume, tmp_path, ["--checkpoint-every-batches", "1", "--checkpoint-keep", "1"])
    servers.start()
    try:
        first = play_until(servers.target, small_stream, 22)  # bucket 0 ended (durably), a few batches of bucket 1
        assert [e["bucket"] for e in first.result.bucket_ends] == [0] and first.result.bucket_ends[0]["durable"]
        volume.fill()
        job = replay(servers.target, small_stream)  # the rest of bucket 1, then EndBucket(1) fails
        with pytest.raises(ServiceError) as failed:
            job.run()
        assert failed.value.code == grpc.StatusCode.FAILED_PRECONDITION and failed.value.method == "EndBucket"
        assert failed.value.details.startswith("not durable: the end of bucket 1")
        assert "No space left on device" in failed.value.details and str(volume.path) in failed.value.details
        assert job.result.bucket_ends == []

        # What the server says meanwhile: training not durable, serving up.
        target = servers.target
        assert health(target, "clstream.v1.Training") == "NOT_SERVING"
        assert health(target, "") == health(target, "clstream.v1.ContinualLearner") == "SERVING"
        with Client(target) as client:
            assert len(client.predict(small_stream.buckets[0].test.batch(torch.arange(4))[0]).labels) == 4
            status = client.status()
        assert "No space left on device" in status.checkpoint_error and status.batches_since_checkpoint >= 15
        assert gauge(servers.current, "clstream_checkpoint_durable") == 0
        assert gauge(servers.current, "clstream_batches_since_checkpoint") == status.batches_since_checkpoint
        # 15+ failing batches, yet one log line for the streak, no traceback, and back-off instead of a
        # rebuilt checkpoint after every batch.
        log = servers.log()
        assert log.count("checkpoint write failed") == 1 and "Traceback" not in log
        assert gauge(servers.current, "clstream_checkpoint_failures_total") < status.batches_since_checkpoint

        # The CLI, same command, disk still full: it plays bucket 2 and then fails, non-zero, with the message.
        capsys.readouterr()
        assert cli(stream_command(target, tmp_path / "full")) == 1
        err = capsys.readouterr().err
        assert "not durable" in err and "No space left on device" in err and "Traceback" not in err

        # kill -9 with the disk full: bucket 0's end, reported done, survives.
        servers.restart()
        with Client(target) as client:
            status = client.status()
        assert status.open_bucket == 1 and 22 <= status.applied_sequences[job.result.stream_id] < 40
        volume.empty()
        rerun(servers, tmp_path, reference)
    finally:
        servers.stop_all()


def test_a_read_only_folder_then_sigterm_exits_non_zero_and_says_what_is_lost(
        volume, tmp_path, small_stream, reference):
    """Learner process mode: the durability news crosses the process boundary too."""
    servers = Servers(volume, tmp_path, ["--checkpoint-every-batches", "5", "--learner-process"])
    servers.start()
    try:
        play_until(servers.target, small_stream, 22)  # durable: bucket 0's end (20); the next checkpoint is due at 25
        volume.read_only()
        job = play_until(servers.target, small_stream, 33)
        with Client(servers.target) as client:
            status = client.status()
        mark = status.applied_sequences[job.result.stream_id]
        assert mark >= 33 and status.durable_sequences[job.result.stream_id] == 20
        assert "Read-only file system" in status.checkpoint_error
        assert health(servers.target, "clstream.v1.Training") == "NOT_SERVING"

        assert servers.current.stop() == 1  # SIGTERM: the final checkpoint fails
        log = servers.log()
        assert "stopped cleanly" not in log and "Traceback" not in log
        assert f"{mark - 20} batches applied since the last durable checkpoint" in log

        volume.writable()
        servers.start()
        with Client(servers.target) as client:
            assert client.status().applied_sequences[job.result.stream_id] == 20  # what was durable, exactly
        rerun(servers, tmp_path, reference)
    finally:
        volume.writable()
        servers.stop_all()


def test_a_restart_between_the_last_ack_and_end_bucket_is_caught_and_resent(volume, tmp_path, small_stream,
                                                                            reference):
    """Checkpoints after 7 batches, and at bucket ends: at 7, 14, 20, 27, 34. The restart before
    EndBucket(1) loses 35..40, which the client had seen acknowledged; EndBucket names sequence 40
    and is refused, so the client resends 35..40 from the server's mark instead of ending bucket 1
    without them."""
    servers = Servers(volume, tmp_path, ["--checkpoint-every-batches", "7"])
    servers.start()

    class RestartingClient(Client):
        def end_bucket(self, bucket, *args, **kwargs):
            if bucket == 1 and len(servers.all) == 1:
                servers.restart()  # the pause between the last ack and EndBucket
                self.wait_until_serving(60)  # the channel reconnected: EndBucket reaches the new server
            return super().end_bucket(bucket, *args, **kwargs)

    try:
        result = replay(servers.target, small_stream, client_class=RestartingClient).run()
        [resume] = result.resumes
        assert resume["error"] == "ABORTED" and resume["applied_sequence"] == 34 and resume["open_bucket"] == 1
        assert result.retrained == 6 and result.durable
        assert_exact(servers.target, reference)
        rerun(servers, tmp_path, reference)
    finally:
        servers.stop_all()


def test_incomplete_and_corrupt_checkpoints_are_refused_at_start(volume, tmp_path, reference, caplog):
    from server.main import main as server_main

    servers = Servers(volume, tmp_path)
    servers.start()
    try:
        assert cli(stream_command(servers.target, tmp_path / "first")) == 0
        assert servers.current.stop() == 0
    finally:
        servers.stop_all()
    newest = sorted(volume.path.glob("checkpoint-*.ckpt"))[-1]
    flags = servers.args + ["--port", "0", "--no-metrics-enabled"]
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}  # main() installs its own
    try:
        assert server_main(flags + ["--lr", "0.05"]) == 2, "a model trained at another learning rate is not continued"
        assert f"checkpoint {newest} was trained with other learner settings" in caplog.text
        assert "'lr': (0.1, 0.05)" in caplog.text
        caplog.clear()
        state = decode(newest.read_bytes())
        state.pop("drift")
        newest.write_bytes(encode(state))  # verifies (a good hash), lacks a key
        assert server_main(flags) == 2
        assert f"checkpoint {newest} verifies but is incomplete" in caplog.text and "missing ['drift']" in caplog.text
        for path in volume.path.glob("checkpoint-*.ckpt"):
            path.write_bytes(path.read_bytes()[:100])  # every one truncated
        caplog.clear()
        assert server_main(flags) == 2
        assert f"every checkpoint in {volume.path} is corrupt" in caplog.text
        caplog.clear()
        assert server_main(flags) == 2, "a restart does not start empty either: the refusal holds"
        assert "--start-empty-on-corrupt" in caplog.text
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)

    servers.start("--start-empty-on-corrupt")  # asked for explicitly: starts empty, the rerun trains it all
    try:
        assert "starting empty" in servers.log()
        assert cli(stream_command(servers.target, tmp_path / "again")) == 0
        assert_exact(servers.target, reference)
        rerun(servers, tmp_path, reference)
    finally:
        servers.stop_all()


def test_a_second_dataset_or_schema_is_refused_not_a_silent_no_op(volume, tmp_path, reference, capsys):
    other = tmp_path / "other.npz"
    rng = np.random.default_rng(0)
    np.savez(other, train_x_0=rng.random((20, 1, 4, 4), dtype=np.float32), train_y_0=np.arange(20) % 3,
             test_x_0=rng.random((6, 1, 4, 4), dtype=np.float32), test_y_0=np.arange(6) % 3)
    servers = Servers(volume, tmp_path)
    servers.start()
    try:
        assert cli(stream_command(servers.target, tmp_path / "first")) == 0
        capsys.readouterr()
        assert cli(stream_command(servers.target, tmp_path / "second", "digits-permuted")) == 2
        err = capsys.readouterr().err
        assert "has ended buckets 0..2, but applied only 0 of this stream's batches" in err
        assert not (tmp_path / "second" / "report.json").exists()
        command = [a for a in stream_command(servers.target, tmp_path / "npz", f"buckets-npz:{other}")
                   if a not in STREAM_FLAGS]
        assert cli(command) == 2
        err = capsys.readouterr().err
        assert "holds a model of another schema" in err and "input [1, 8, 8]" in err and "input [1, 4, 4]" in err
        assert_exact(servers.target, reference)  # neither touched it
        report = rerun(servers, tmp_path, reference)
        assert report["duplicate_acks"] == 0 and report["skipped_buckets"] == [0, 1, 2]
    finally:
        servers.stop_all()
