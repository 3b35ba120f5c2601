"""Stream ids' applied marks (server/stream_marks.py) through the real server: a full table refuses a
new stream naming both ways out; marks idle too long are dropped, least recently used first; the
admin RPC ForgetStream drops one at once, after which that id is no longer deduplicated."""
from __future__ import annotations

import time

import grpc
import pytest

from clstream_proto import continual_learner_pb2 as pb
from service_helpers import train_batches


def one(stub, stream, stream_id: str, sequence: int = 1):
    return list(stub.Train(train_batches(stream, 0, first_sequence=sequence, stream_id=stream_id, limit=1)))[0]


def marks(stub) -> dict:
    return dict(stub.GetStatus(pb.GetStatusRequest()).applied_sequences)


@pytest.mark.parametrize("learner_process", [False, True], ids=["thread", "learner-process"])
def test_a_full_table_names_both_ways_out_and_forget_stream_frees_a_place(start, connect, stream, learner_process):
    stub = connect(start(max_streams=3, learner_process=learner_process))
    for s in ("a", "b", "c"):
        assert one(stub, stream, s).applied
    with pytest.raises(grpc.RpcError) as e:
        one(stub, stream, "d")
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    for words in ("max_streams", "stream_mark_max_idle_seconds", "ForgetStream", "clstream-client forget-stream"):
        assert words in e.value.details(), e.value.details()
    assert marks(stub) == {"a": 1, "b": 1, "c": 1}  # nothing of the refused batch applied

    r = stub.ForgetStream(pb.ForgetStreamRequest(stream_id="a"))
    assert r.forgotten and r.sequence == 1 and r.streams_known == 2 and r.stream_id == "a"
    again = stub.ForgetStream(pb.ForgetStreamRequest(stream_id="a"))
    assert not again.forgotten and again.sequence == 0 and again.streams_known == 2
    assert one(stub, stream, "d").applied
    assert marks(stub) == {"b": 1, "c": 1, "d": 1}
    with pytest.raises(grpc.RpcError) as e:
        stub.ForgetStream(pb.ForgetStreamRequest(stream_id=""))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and e.value.details().startswith("stream_id")


def test_a_forgotten_stream_is_no_longer_deduplicated(start, connect, stream):
    """What RELIABILITY.md says about exactly-once: after its mark is dropped, a resent batch is new."""
    stub = connect(start())
    assert one(stub, stream, "s").applied and one(stub, stream, "s").duplicate
    assert stub.ForgetStream(pb.ForgetStreamRequest(stream_id="s")).forgotten
    ack = one(stub, stream, "s")
    assert ack.applied and not ack.duplicate and stub.GetStatus(pb.GetStatusRequest()).samples_trained == 20


def test_marks_idle_too_long_are_dropped_least_recently_used_first(start, connect, stream):
    stub = connect(start(max_streams=2, stream_mark_max_idle_seconds=1))
    assert one(stub, stream, "old").applied and one(stub, stream, "busy").applied
    time.sleep(1.5)  # both idle past the age; then "busy" sends again (a duplicate counts as use)
    assert one(stub, stream, "busy").duplicate
    assert one(stub, stream, "new").applied  # takes the place of "old", the least recently used
    assert marks(stub) == {"busy": 1, "new": 1}
    with pytest.raises(grpc.RpcError) as e:  # "busy" and "new" are fresh: nothing to drop
        one(stub, stream, "newer")
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "idle for 1 s" in e.value.details()
