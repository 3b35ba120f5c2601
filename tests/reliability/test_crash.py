"""SIGKILL the real clstream-server (client.local_server) at several points of one replayed stream,
restart it on the same port and checkpoint directory each time, and let client.replay resume.

The kill points: mid-bucket after some acks, right after an EndBucket returned, during an EndBucket
call, and during a checkpoint write (the server then checkpoints after every batch and a watcher
kills it the moment a `.checkpoint-*.tmp` file exists). Afterwards the server has trained exactly
stream size × epochs samples, its matrix, initial row and buffer equal the in-process run_stream's
for the same seed, and no temp or corrupt checkpoint is left or was loaded.

tests/client/test_client_resume.py shows one mid-bucket kill; this extends it to a sequence of
kill points in one run (more of them with CLSTREAM_LONG_TESTS=1). Figures: crash.json."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cl_engine import run_stream
from client.api import Client
from client.demo import server_flags
from client.local_server import LocalServer, free_port
from client.replay import Replay, ReplayOptions
from client_helpers import clean_environment, learner
from reliability_support import LONG

EVERY = 7  # checkpoint every 7 batches (and at every bucket end) unless a checkpoint write is to be hit
TOTAL = 60  # 3 buckets × 20 batches of 10


@dataclass
class Kill:
    kind: str  # "ack": after the ack of `at`; "after_end"/"during_end": EndBucket(at); "checkpoint_write": from ack `at` on
    at: int

    @property
    def name(self) -> str:
        return f"{self.kind}@{self.at}"


# Each restart costs a server start (5-10 s on a loaded 2-core machine): two by default, nine in the long run.
# Both default kills lose acknowledged batches mid-bucket (EndBucket 1 is reached with batches 35..40 past the
# last checkpoint; the checkpoint-write kill comes after ack 45); test_client_resume.py kills at a plain ack.
DEFAULT_PLAN = [Kill("during_end", 1), Kill("checkpoint_write", 45)]
LONG_PLAN = [Kill("ack", 1), Kill("ack", 12), Kill("ack", 20), Kill("after_end", 0), Kill("ack", 27),
             Kill("during_end", 1), Kill("checkpoint_write", 45), Kill("ack", 58), Kill("during_end", 2)]


class Crasher:
    """Owns the server processes: kills the current one at the plan's next point and starts the next."""

    def __init__(self, plan: list[Kill], tmp: Path, config):
        self.plan, self.tmp, self.port = list(plan), tmp, free_port()
        self.ckpt = tmp / "ckpt"
        self.base = server_flags(config) + ["--checkpoint-dir", str(self.ckpt)]
        self.servers: list[LocalServer] = []
        self.events: list[dict] = []
        self.next = 0
        self.lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    @property
    def current(self) -> Kill | None:
        return self.plan[self.next] if self.next < len(self.plan) else None

    def start(self) -> LocalServer:
        kill = self.current
        every = 1 if kill is not None and kill.kind == "checkpoint_write" else EVERY
        server = LocalServer(self.base + ["--checkpoint-every-batches", str(every)], port=self.port,
                             log_path=self.tmp / f"server-{len(self.servers)}.log", env=clean_environment())
        self.servers.append(server.start())
        return server

    def crash(self, note: dict | None = None) -> None:
        """SIGKILL the running server, note what was on disk, start the next one."""
        with self.lock:
            kill = self.current
            t0 = time.perf_counter()
            self.servers[-1].kill()
            leftovers = sorted(p.name for p in self.ckpt.glob(".checkpoint-*.tmp"))
            self.next += 1
            self.start()
            self.events.append({"kill": kill.name, "returncode": self.servers[-2].process.returncode,
                                "tmp_files_after_kill": leftovers, "restart_seconds": time.perf_counter() - t0,
                                **(note or {})})

    # -- the hooks ------------------------------------------------------------------------------

    def on_ack(self, ack) -> None:
        kill = self.current
        if kill is None:
            return
        if kill.kind == "ack" and ack.sequence == kill.at:
            self.crash({"acknowledged": ack.sequence})
        elif kill.kind == "checkpoint_write" and ack.sequence >= kill.at and self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, args=(kill,), daemon=True)
            self._watcher.start()

    def _watch(self, kill: Kill, limit: float = 30.0) -> None:
        """Poll the checkpoint directory; SIGKILL the server while a temp checkpoint file exists."""
        deadline, polls = time.monotonic() + limit, 0
        while time.monotonic() < deadline and self.current is kill:
            polls += 1
            if any(self.ckpt.glob(".checkpoint-*.tmp")):
                self.crash({"polls": polls})
                return
            time.sleep(0.0002)
        with self.lock:  # the stream ended first: note the miss, move on
            if self.current is kill:
                self.events.append({"kill": kill.name, "missed": True, "polls": polls})
                self.next += 1

    def end_bucket(self, call, bucket: int, *args, **kwargs):
        kill = self.current
        if kill is None or kill.at != bucket or kill.kind not in ("after_end", "during_end"):
            return call(bucket, *args, **kwargs)
        if kill.kind == "after_end":
            result = call(bucket, *args, **kwargs)
            self.crash({"end_bucket": "answered"})
            return result
        timer = threading.Timer(0.01, lambda: self.servers[-1].process.kill())  # SIGKILL 10 ms into the call
        timer.start()
        error = None
        try:
            result = call(bucket, *args, **kwargs)
        except Exception as e:  # UNAVAILABLE: the replay resumes from GetStatus
            error = e
        timer.join()
        self.crash({"end_bucket": "interrupted" if error else "answered before the kill"})
        if error is not None:
            raise error
        return result


class CrashingClient(Client):
    crasher: Crasher

    def end_bucket(self, bucket, *args, **kwargs):
        return self.crasher.end_bucket(super().end_bucket, bucket, *args, **kwargs)


def _int_keys(d: dict) -> dict:
    return {int(k): v for k, v in d.items()}


def test_sigkill_at_every_point_of_a_stream_resumes_with_exact_accounting(small_stream, tmp_path, figures):
    plan = LONG_PLAN if LONG else DEFAULT_PLAN
    crasher = Crasher(plan, tmp_path, learner())
    t0 = time.perf_counter()
    # The in-process reference run, computed while the server processes start (they mostly import).
    pool = ThreadPoolExecutor(1)
    reference_run = pool.submit(run_stream, small_stream, learner(), batch_size=10, epochs=1, progress=False)
    pool.shutdown(wait=False)
    crasher.start()
    try:
        with CrashingClient(f"127.0.0.1:{crasher.port}") as client:
            client.crasher = crasher
            result = Replay(client, small_stream, ReplayOptions(query_every=5, progress=False, reconnect_timeout=120),
                            on_ack=crasher.on_ack).run()
    finally:
        codes = [s.stop() for s in crasher.servers]
    wall = time.perf_counter() - t0
    reference = reference_run.result(timeout=300)

    kills = [e for e in crasher.events if not e.get("missed")]
    figures("crash", {"plan": [k.name for k in plan], "events": crasher.events, "resumes": result.resumes,
                      "retrained_batches": result.retrained, "samples_trained": result.final_status.samples_trained,
                      "expected_samples": 3 * 200, "wall_seconds": wall,
                      "servers_started": len(crasher.servers)})

    assert len(kills) >= len(plan) - 1, f"kill points missed: {crasher.events}"
    assert all(e["returncode"] == -9 for e in kills) and codes[-1] == 0
    assert len(crasher.servers) == len(kills) + 1

    # Exactly once, as the in-process run: samples, batches, marks, matrix, buffer.
    status = result.final_status
    assert status.samples_trained == 3 * 200 and status.batches_trained == TOTAL  # stream size × epochs, exactly
    assert status.applied_sequences == {result.stream_id: TOTAL} and status.open_bucket == 3
    assert sorted(result.acks) == list(range(1, TOTAL + 1))
    assert result.retrained == sum(max(0, r["acknowledged_sequence"] - r["applied_sequence"]) for r in result.resumes)
    np.testing.assert_allclose(status.accuracy_matrix, reference["accuracy_matrix"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(status.initial_accuracy, reference["initial_accuracy"], rtol=0, atol=1e-9)
    buffer, expected = status.buffer, reference["buffer"]
    assert buffer["size"] == expected["size"] == sum(_int_keys(buffer["by_bucket"]).values()) <= buffer["capacity"]
    assert _int_keys(buffer["by_bucket"]) == _int_keys(expected["by_bucket"])
    assert _int_keys(buffer["by_class"]) == _int_keys(expected["by_class"])

    # No temp or corrupt checkpoint left, none loaded: every restart resumed from a verified file.
    assert not list(crasher.ckpt.glob("*.tmp")) and not list(crasher.ckpt.glob("*.corrupt"))
    logs = [s.log_path.read_text(errors="replace") for s in crasher.servers]
    assert not any("is corrupt" in log for log in logs)
    for event, log in zip(kills, logs[1:]):
        if event["tmp_files_after_kill"]:  # the half-written file was removed, never loaded
            assert "left over from an interrupted checkpoint write" in log
