"""The broker path through the real parts: Debian's redis-server on loopback, the real clstream-server
processes, and the `clstream-client publish` / `consume` commands as a user runs them (docs/broker.md)."""
from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import threading
import time

import numpy as np

from cl_engine import build_stream, StreamOptions
from client.api import Client, RetryPolicy
from client.broker import END, END_BUCKET, MAX_ENTRY_BYTES, TRAIN, entry_sequence, from_npy
from client.demo import server_flags
from client.local_server import LocalServer, free_port
from cli_helpers import one_line_error
from client_helpers import STREAM, STREAM_FLAGS, clean_environment, learner, target as address

CLIENT = [sys.executable, "-m", "client"]


def publish(redis_server, key: str, *extra: str) -> dict:
    done = subprocess.run(CLIENT + ["publish", "--redis", redis_server.url, "--stream", key, "--dataset",
                                    "digits-rotated", *STREAM_FLAGS, "--quiet", "--json", *extra],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_unpacked_redis_server_runs_on_loopback_with_its_data_in_the_test_folder(redis_server, tmp_path):
    r = redis_server.client()
    assert r.ping() and r.info("server")["redis_version"]
    assert r.config_get("dir")["dir"] == str(tmp_path / "redis")
    assert r.config_get("bind")["bind"] == "127.0.0.1"


def test_publish_writes_the_stream_in_time_order_with_markers_meta_and_held_out_sets(redis_server):
    summary = publish(redis_server, "digits")
    stream = build_stream("digits-rotated", StreamOptions(**STREAM))
    r = redis_server.client()
    entries = r.xrange("digits")
    kinds = [f[b"kind"].decode() for _, f in entries]
    # 20 batches of 10 per bucket, each followed by its bucket-end marker; one end-of-stream marker last.
    assert kinds == ([TRAIN] * 20 + [END_BUCKET]) * 3 + [END] and summary["entries"] == 64
    sequences = [entry_sequence(i) for i, _ in entries]
    assert sequences == sorted(set(sequences))  # strictly increasing Train sequences
    train = [(i, f) for i, f in entries if f[b"kind"] == TRAIN.encode()]
    assert sum(len(from_npy(f[b"y"])) for _, f in train) == 600 == summary["samples"]
    assert all(len(f[b"x"]) + len(f[b"y"]) < MAX_ENTRY_BYTES for _, f in train)
    x0 = from_npy(train[0][1][b"x"])
    assert x0.shape == (10, *stream.input_shape) and x0.dtype == np.float32
    markers = [(i, f) for i, f in entries if f[b"kind"] != TRAIN.encode()]
    for b in range(3):  # a bucket-end marker names its bucket's last training entry
        last_id = train[20 * b + 19][0]
        assert markers[b][1][b"bucket"] == str(b).encode() and markers[b][1][b"last"] == last_id
        assert {int(f[b"bucket"]) for _, f in train[20 * b: 20 * b + 20]} == {b}
    meta = json.loads(r.get("digits:meta"))
    assert meta["stream_id"] == summary["stream_id"] and meta["schema"]["class_names"] == list(stream.class_names)
    assert meta["heldout"] == ["digits:heldout:0", "digits:heldout:1", "digits:heldout:2"]
    assert meta["within_bucket"] == "shuffled" and meta["seed"] == 0
    for b, key in enumerate(meta["heldout"]):
        chunks = [np.load(io.BytesIO(c)) for c in r.lrange(key, 0, -1)]
        assert sum(len(c["y"]) for c in chunks) == len(stream.buckets[b].test) == meta["heldout_samples"][b]

    # A second publish to the same key is refused (one line, exit 2, nothing written); --replace starts over.
    err = one_line_error(["-m", "client", "publish", "--redis", redis_server.url, "--stream", "digits", "--quiet",
                          *STREAM_FLAGS])
    assert "--stream digits" in err and "--replace" in err and r.xlen("digits") == 64
    again = publish(redis_server, "digits", "--replace")
    assert again["stream_id"] != summary["stream_id"] and r.xlen("digits") == 64


class ConsumerProcess:
    """`clstream-client consume` as a child process; its stderr is collected as it comes."""

    def __init__(self, redis_server, key: str, group: str, target: str, name: str, *extra: str):
        self.process = subprocess.Popen(
            CLIENT + ["consume", "--redis", redis_server.url, "--stream", key, "--group", group, "--target", target,
                      "--consumer", name, "--json", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_environment())
        self.stderr: list[str] = []
        self.stdout: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(pipe, lines), daemon=True)
                         for pipe, lines in ((self.process.stderr, self.stderr), (self.process.stdout, self.stdout))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(pipe, lines: list[str]) -> None:
        for line in pipe:
            lines.append(line)

    def said(self, text: str) -> bool:
        return any(text in line for line in self.stderr)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        self.process.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        return self.process.returncode, "".join(self.stdout)


def wait_until(condition, timeout: float = 120, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_consumer_killed_twice_and_server_killed_once_ends_with_the_stream_trained_exactly_once(
        redis_server, tmp_path):
    """Consumer a feeds the server; b, in the same group, waits as a standby. a is SIGKILLed: b takes over
    and claims a's pending entries. The server is SIGKILLed and restarted from its checkpoint. b is SIGKILLed:
    c claims b's pending entries and finishes. The result equals `clstream-client stream`'s on the same data."""
    config = learner()
    summary = publish(redis_server, "digits", "--seed", str(config.seed))  # the order `stream` takes from the learner
    sid = summary["stream_id"]
    r = redis_server.client()
    train_sequences = [entry_sequence(i) for i, f in r.xrange("digits") if f[b"kind"] == TRAIN.encode()]
    port = free_port()
    args = server_flags(config) + ["--checkpoint-dir", str(tmp_path / "ckpt"), "--checkpoint-every-batches", "7"]
    servers = [LocalServer(args, port=port, log_path=tmp_path / "server-0.log", env=clean_environment()).start()]
    target = f"127.0.0.1:{port}"
    watcher = Client(target, retry=RetryPolicy(attempts=1_000_000, max_backoff=0.5, deadline=120))
    # 40 samples/s (4 batches/s): the kills below land mid-stream. A lease of 3 s: a standby takes over soon,
    # and a loaded machine does not delay a renewal (every second) past it.
    flags = ["--lease", "3", "--rate", "40", "--max-in-flight", "3", "--reconnect-timeout", "120"]

    def batches(mark: int) -> int:
        return sum(s <= mark for s in train_sequences)

    def applied_but_not_durable(at_least: int):
        """Past batch `at_least`, with 2 or more batches applied that the server has not made durable yet:
        those are pending in the group and the next consumer must get them answered as duplicates."""
        def check() -> bool:
            s = watcher.status()
            applied, durable = s.applied_sequences.get(sid, 0), s.durable_sequences.get(sid, 0)
            return batches(applied) >= at_least and batches(applied) - batches(durable) >= 2
        return check

    consumers = []
    try:
        a = ConsumerProcess(redis_server, "digits", "g", target, "a", *flags)
        consumers.append(a)
        wait_until(lambda: watcher.status().applied_sequences.get(sid, 0) > 0, what="consumer a to train")
        b = ConsumerProcess(redis_server, "digits", "g", target, "b", *flags)
        consumers.append(b)
        wait_until(lambda: b.said("standby: consumer a holds the lease"), what="b to wait as a standby")
        assert a.process.poll() is None and not b.said("claimed")  # one active consumer per group

        wait_until(applied_but_not_durable(10), what="a mid-bucket 0")
        a.kill()
        wait_until(lambda: b.said("claimed"), what="b to take over")

        wait_until(lambda: batches(watcher.status().applied_sequences.get(sid, 0)) >= 28, what="bucket 1")
        servers[0].kill()
        servers.append(LocalServer(args, port=port, log_path=tmp_path / "server-1.log",
                                   env=clean_environment()).start())

        wait_until(applied_but_not_durable(45), what="b mid-bucket 2")
        b.kill()
        c = ConsumerProcess(redis_server, "digits", "g", target, "c", *flags)
        consumers.append(c)
        code, out = c.finish()
        assert code == 0, "".join(c.stderr)[-3000:]
        final = watcher.status()
    finally:
        for consumer in consumers:
            consumer.kill()
        for s in servers:
            s.stop()
    assert servers[0].process.returncode == -9 and servers[1].process.returncode == 0
    assert a.process.returncode == -9 and b.process.returncode == -9

    result = json.loads(out)
    assert result["finished"] == "end" and result["durable"] is True and result["consumer"] == "c"
    # b's entries that the server had applied but not made durable were redelivered to c: duplicates.
    assert result["redelivered"] >= 2 and result["duplicates"] >= 2
    assert b.said("server unavailable") and b.said("claimed")  # b resumed after the server's crash
    # Exactly once: every sample of the stream trained once, every entry acknowledged, nothing pending.
    assert final.samples_trained == 600 and final.batches_trained == 60
    assert final.applied_sequences[sid] == train_sequences[-1] == final.durable_sequences[sid]
    assert r.xpending("digits", "g")["pending"] == 0
    [group] = r.xinfo_groups("digits")
    assert group["last-delivered-id"] == r.xrevrange("digits", count=1)[0][0]

    # The same matrix as `clstream-client stream` on the same data, against a fresh server.
    with LocalServer(server_flags(config), log_path=tmp_path / "server-ref.log", env=clean_environment()) as ref:
        done = subprocess.run(CLIENT + ["stream", "--target", ref.target, "--dataset", "digits-rotated",
                                        *STREAM_FLAGS, "--quiet", "--no-figures", "--report", str(tmp_path / "ref")],
                              capture_output=True, text=True, timeout=300, env=clean_environment())
        assert done.returncode == 0, done.stderr
    reference = json.loads((tmp_path / "ref" / "report.json").read_text())
    np.testing.assert_allclose(final.accuracy_matrix, reference["accuracy_matrix"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(final.initial_accuracy, reference["initial_accuracy"], rtol=0, atol=1e-9)
    assert result["accuracy_matrix"] == final.accuracy_matrix



def test_without_checkpoints_entries_are_acknowledged_at_their_bucket_end_and_a_late_consumer_has_nothing_to_do(
        redis_server, service):
    summary = publish(redis_server, "digits")
    server = service(learner())  # no checkpoint directory: nothing is ever durable
    r = redis_server.client()
    first = ConsumerProcess(redis_server, "digits", "g", address(server), "a")
    code, out = first.finish()
    assert code == 0, "".join(first.stderr)
    result = json.loads(out)
    assert result["finished"] == "end" and result["durable"] is False and result["batches_applied"] == 60
    assert result["acked"] == 64 and r.xpending("digits", "g")["pending"] == 0
    assert first.said("the server keeps no checkpoints")
    assert result["samples_trained"] == 600 and summary["samples"] == 600

    late = ConsumerProcess(redis_server, "digits", "g", address(server), "b")
    code, out = late.finish()
    assert code == 0 and json.loads(out)["finished"] == "already" and json.loads(out)["entries"] == 0
    assert late.said("has consumed digits to its end-of-stream marker")

    # The stream published anew is another stream_id: this server, which ended buckets of the first, is refused.
    publish(redis_server, "digits", "--replace")
    err = one_line_error(["-m", "client", "consume", "--redis", redis_server.url, "--stream", "digits", "--group",
                          "g2", "--target", address(server), "--quiet"])
    assert "has ended buckets 0..2 but never trained this stream" in err


def test_follow_keeps_reading_after_the_end_marker_and_an_interrupted_consumer_hands_its_lease_over(
        redis_server, service):
    done = subprocess.run(CLIENT + ["publish", "--stream", "digits", *STREAM_FLAGS, "--quiet"], capture_output=True,
                          text=True, timeout=300, env={**clean_environment(), "CLSTREAM_REDIS": redis_server.url})
    assert done.returncode == 0 and "published" in done.stdout, done.stderr  # --redis from CLSTREAM_REDIS
    server = service(learner())
    r = redis_server.client()
    follower = ConsumerProcess(redis_server, "digits", "g", address(server), "a", "--follow", "--lease", "30")
    try:
        wait_until(lambda: follower.said("following digits"), what="the end of the stream")
        time.sleep(1.5)
        assert follower.process.poll() is None and r.get("digits:lease:g") == b"a"
        follower.process.send_signal(signal.SIGINT)
        code, _ = follower.finish(timeout=60)
    finally:
        follower.kill()
    assert code == 130 and r.get("digits:lease:g") is None  # released: a standby need not wait 30 s


def test_a_consumer_that_stalled_past_its_lease_stops_before_sending_another_entry(redis_server, service):
    publish(redis_server, "digits")
    server = service(learner())
    r = redis_server.client()
    a = ConsumerProcess(redis_server, "digits", "g", address(server), "a", "--rate", "20", "--lease", "1",
                        "--max-in-flight", "1")
    with Client(address(server)) as watcher:
        def mark() -> int:
            return sum(watcher.status().applied_sequences.values())
        try:
            wait_until(lambda: mark() > 0, what="a to train")
            a.process.send_signal(signal.SIGSTOP)  # a stalls (a pause, a swapped-out host) ...
            time.sleep(0.5)
            before = mark()
            r.set("digits:lease:g", "b", px=60_000)  # ... past its lease, and a standby took over
            a.process.send_signal(signal.SIGCONT)
            code, out = a.finish(timeout=60)
            after = mark()
        finally:
            a.kill()
    err = "".join(a.stderr).strip().splitlines()[-1]
    assert code == 1 and out == "" and "Traceback" not in "".join(a.stderr)
    assert err.startswith("error: this consumer (a) lost the lease digits:lease:g")
    assert after == before  # nothing more was sent once it woke up


def test_broker_command_mistakes_are_one_line(redis_server, service, tmp_path):
    server = service(learner())
    base = ["-m", "client", "consume", "--redis", redis_server.url, "--stream", "digits", "--group", "g",
            "--target", address(server)]
    err = one_line_error(base + ["--lease", "0"])
    assert err == "error: --lease must be > 0 seconds, got 0.0"
    err = one_line_error(base)  # nothing published under that key
    assert "--stream digits" in err and "clstream-client publish" in err
    err = one_line_error(["-m", "client", "publish", "--redis", "http://127.0.0.1:1", "--stream", "k", *STREAM_FLAGS])
    assert err.startswith("error: --redis 'http://127.0.0.1:1'") and "redis://HOST:PORT" in err
    err = one_line_error(["-m", "client", "publish", "--redis", f"redis://127.0.0.1:{free_port()}", "--stream", "k",
                          *STREAM_FLAGS], code=1)
    assert err.startswith("error: Redis at redis://127.0.0.1:")
    err = one_line_error(["-m", "client", "publish", "--redis", redis_server.url, "--stream", "undated",
                          "--within-bucket", "upload-time", *STREAM_FLAGS])
    assert "--within-bucket upload-time" in err and "has no upload dates" in err
    assert not redis_server.client().exists("undated", "undated:meta")  # refused before anything is written
    publish(redis_server, "digits")
    err = one_line_error(base[:-1] + [f"127.0.0.1:{free_port()}"], code=1)
    assert "no server answers at" in err
