"""A server killed with SIGKILL in the middle of a bucket and started again: the replay waits,
reads the applied sequence from the restored checkpoint, sends what was lost, and the run ends
exactly as an uninterrupted one: every sample trained once per pass (stream size × epochs), the same
matrix. Two passes per bucket, killed in the second pass, whose batch order is the seeded shuffle that
the replay must rebuild for the batches it sends again."""
from __future__ import annotations

import urllib.request

import numpy as np

from cl_engine import run_stream
from client.api import Client
from client.demo import server_flags
from client.local_server import LocalServer, free_port
from client.replay import Replay, ReplayOptions
from client_helpers import clean_environment, learner

EPOCHS = 2  # 20 batches of 10 per pass and bucket: bucket b holds sequences 40b+1..40b+40
EVERY = 7  # the server checkpoints every 7 batches and at every bucket end
KILL_AT = 71  # bucket 1 (41..80) in its second pass (61..80); checkpoints at 40 (bucket 0's end), 47, ..., 68, 75


def test_a_server_killed_mid_bucket_resumes_from_its_checkpoint_with_exact_accounting(small_stream, tmp_path):
    config = learner()
    port = free_port()
    args = server_flags(config) + ["--checkpoint-dir", str(tmp_path / "ckpt"), "--checkpoint-every-batches",
                                   str(EVERY)]
    servers = [LocalServer(args, port=port, log_path=tmp_path / "server-0.log", env=clean_environment()).start()]
    metrics_pages: list[bytes] = []

    def crash(ack):
        if ack.sequence == KILL_AT and len(servers) == 1:
            with urllib.request.urlopen(servers[0].metrics_url, timeout=10) as page:  # live during the run
                metrics_pages.append(page.read())
            servers[0].kill()
            servers.append(LocalServer(args, port=port, log_path=tmp_path / "server-1.log",
                                       env=clean_environment()).start())

    try:
        with Client(f"127.0.0.1:{port}") as client:
            # At most 3 batches unacknowledged: when ack 71 kills the server it has seen 74 at most, so it
            # cannot have reached the checkpoint at 75 (with 16 in flight it sometimes had).
            options = ReplayOptions(epochs=EPOCHS, query_every=5, progress=False, reconnect_timeout=120,
                                    max_in_flight=3)
            result = Replay(client, small_stream, options, on_ack=crash).run()
    finally:
        for s in servers:
            s.stop()
    assert len(servers) == 2 and servers[0].process.returncode == -9 and servers[1].process.returncode == 0
    assert b"clstream_" in metrics_pages[0]

    [resume] = result.resumes
    applied, acknowledged = resume["applied_sequence"], resume["acknowledged_sequence"]
    assert resume["open_bucket"] == 1 and resume["error"] == "UNAVAILABLE"
    # 68 was checkpointed before 71 was trained, 75 could not be reached before the kill; the bucket never ended.
    assert applied == 68, "resumed from the last checkpoint before the kill, in the second pass of bucket 1"
    assert acknowledged >= KILL_AT > applied
    assert result.retrained == acknowledged - applied  # what the server lost was sent and trained once more
    assert sorted(result.acks) == list(range(1, 121)) and [e["bucket"] for e in result.bucket_ends] == [0, 1, 2]

    status = result.final_status
    assert status.samples_trained == 3 * 200 * EPOCHS and status.batches_trained == 120  # size × epochs, exactly
    assert result.samples_applied == status.samples_trained + 10 * result.retrained  # what was lost, sent again
    assert status.applied_sequences == {result.stream_id: 120} and status.last_checkpoint
    reference = run_stream(small_stream, config, batch_size=10, epochs=EPOCHS, progress=False)
    np.testing.assert_allclose(status.accuracy_matrix, reference["accuracy_matrix"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(status.initial_accuracy, reference["initial_accuracy"], rtol=0, atol=1e-9)
