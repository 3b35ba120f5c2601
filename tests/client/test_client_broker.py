"""The broker path through the real parts: Debian's redis-server on loopback, the real clstream-server
processes, and the `clstream-client publish` / `consume` commands as a user runs them (docs/broker.md)."""
from __future__ import annotations

import json
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
from client_helpers import STREAM, STREAM_FLAGS, clean_environment, learner

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
    for b, key in enumerate(meta["heldout"]):
        chunks = [np.load(__import__("io").BytesIO(c)) for c in r.lrange(key, 0, -1)]
        assert sum(len(c["y"]) for c in chunks) == len(stream.buckets[b].test) == meta["heldout_samples"][b]

    # A second publish to the same key is refused (one line, exit 2, nothing written); --replace starts over.
    err = one_line_error(["-m", "client", "publish", "--redis", redis_server.url, "--stream", "digits", "--quiet",
                          *STREAM_FLAGS])
    assert "--stream digits" in err and "--replace" in err and r.xlen("digits") == 64
    again = publish(redis_server, "digits", "--replace")
    assert again["stream_id"] != summary["stream_id"] and r.xlen("digits") == 64
