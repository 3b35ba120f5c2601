"""The training worker's queue: order, back-pressure, calls that fail or end, shutdown; and load
shedding of concurrent predictions."""
from __future__ import annotations

import threading
import time

import grpc
import pytest
import torch

from cl_engine import LearnerConfig
from clstream_proto import continual_learner_pb2 as pb
from server.codec import encode_samples
from server.errors import Cancelled, FailedPrecondition, ResourceExhausted, Unavailable
from server.metrics import ServerMetrics
from server.schema import Schema, SchemaHolder
from server.snapshot import SnapshotHolder
from server.operations import CallScope, TrainOp
from server.worker import TrainingWorker, WorkerOptions
from service_helpers import eval_chunks, train_batches

SCHEMA = Schema(tuple(str(c) for c in range(10)), (1, 8, 8))


@pytest.fixture
def gated():
    """A worker whose training steps wait for `gate` (so the queue can be filled at will)."""
    worker = TrainingWorker(WorkerOptions(LearnerConfig(device="cpu"), queue_size=2), SchemaHolder(SCHEMA),
                            SnapshotHolder(), ServerMetrics())
    gate = threading.Event()
    train = worker._train
    worker._train = lambda op: (gate.wait(10), train(op))[1]
    worker.start()
    yield worker, gate
    gate.set()
    worker.stop(timeout=10)


def op(sequence, bucket=0, scope=None, stream_id="s"):
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(sequence))
    return TrainOp(scope or CallScope(), stream_id, sequence, bucket, x, torch.tensor([0, 1, 2, 3]), SCHEMA)


def wait_until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_full_queue_makes_the_sender_wait_then_refuses(gated):
    worker, gate = gated
    first = worker.submit(op(1), timeout=1)
    wait_until(lambda: worker.queue_depth == 0)  # the worker holds op 1 at the gate
    queued = [worker.submit(op(2), timeout=1), worker.submit(op(3), timeout=1)]
    t0 = time.monotonic()
    with pytest.raises(ResourceExhausted, match="queue is full"):
        worker.submit(op(4), timeout=0.3)
    assert time.monotonic() - t0 >= 0.3
    # A sender that waits long enough gets in once the worker moves on.
    late = threading.Thread(target=lambda: queued.append(worker.submit(op(5), timeout=10)))
    late.start()
    gate.set()
    late.join()
    results = [f.result(10) for f in [first, *queued]]
    assert [r.version for r in results] == [1, 2, 3, 4] and all(r.applied for r in results)
    assert worker.status()["applied_sequences"] == {"s": 5} and worker.status()["samples_trained"] == 16


def test_after_a_failure_the_rest_of_its_call_is_dropped_unapplied(gated):
    worker, gate = gated
    call, other = CallScope(), CallScope()
    futures = [worker.submit(op(1, scope=call), 1)]
    wait_until(lambda: worker.queue_depth == 0)
    futures += [worker.submit(op(2, bucket=1, scope=call), 1), worker.submit(op(3, scope=call), 1)]
    gate.set()
    assert futures[0].result(10).applied
    with pytest.raises(FailedPrecondition, match="bucket 1"):
        futures[1].result(10)
    with pytest.raises(Cancelled):
        futures[2].result(10)
    assert worker.submit(op(3, scope=other), 1).result(10).applied  # another call is unaffected
    with pytest.raises(Cancelled):
        worker.submit(op(4, scope=call), 1)


class FakeCallContext:
    """grpc.ServicerContext's add_callback: registered while the call runs, refused once it ended."""

    def __init__(self, ended=False):
        self.ended, self.callbacks = ended, []

    def add_callback(self, callback):
        if self.ended:
            return False
        self.callbacks.append(callback)
        return True

    def end(self):
        self.ended = True
        for callback in self.callbacks:
            callback()


def test_a_call_scope_ends_with_its_call(gated):
    worker, gate = gated
    context = FakeCallContext()
    scope = CallScope.of(context)
    assert scope.live
    held = worker.submit(op(1), 1)
    wait_until(lambda: worker.queue_depth == 0)  # the worker holds op 1 at the gate
    queued = worker.submit(op(2, scope=scope), 1)
    context.end()
    assert not scope.live
    gate.set()
    assert held.result(10).applied
    with pytest.raises(Cancelled):
        queued.result(10)  # dropped unapplied: its call ended before the worker reached it
    with pytest.raises(Cancelled):
        worker.submit(op(3, scope=scope), 1)
    assert not CallScope.of(FakeCallContext(ended=True)).live  # a call that ended before its scope was made


def test_status_is_built_on_request_while_batches_keep_coming_and_is_current_when_read():
    worker = TrainingWorker(WorkerOptions(LearnerConfig(device="cpu"), queue_size=4), SchemaHolder(SCHEMA),
                            SnapshotHolder(), ServerMetrics())
    turns = threading.Semaphore(0)  # one training step per release
    train = worker._train
    worker._train = lambda op: (turns.acquire(timeout=10), train(op))[1]
    worker.start()
    try:
        futures = [worker.submit(op(k), 1) for k in (1, 2, 3)]
        turns.release()
        assert futures[0].result(10).applied  # op 1 applied while ops 2 and 3 wait: no status built for it
        wait_until(lambda: worker.queue_depth == 1)  # the worker holds op 2 at its turn
        read: list[dict] = []
        reader = threading.Thread(target=lambda: read.append(worker.status()))
        reader.start()
        reader.join(0.3)
        assert reader.is_alive()  # it waits for the worker's next operation boundary ...
        turns.release()
        reader.join(10)
        status = read[0]  # ... and then sees every operation finished when it asked (op 1), and op 2
        assert status["applied_sequences"] == {"s": 2} and status["samples_trained"] == 8
        turns.release()
        assert futures[2].result(10).applied
        assert worker.status()["samples_trained"] == 12  # idle: built at once after the last operation
    finally:
        for _ in range(3):
            turns.release()
        worker.stop(timeout=10)


def test_stop_applies_what_was_queued_then_refuses(gated):
    worker, gate = gated
    futures = [worker.submit(op(k), 1) for k in (1, 2)]
    threading.Timer(0.2, gate.set).start()
    worker.stop(timeout=10)
    assert [f.result(1).version for f in futures] == [1, 2]
    with pytest.raises(Unavailable):
        worker.submit(op(3), 1)


def test_a_tiny_queue_slows_a_stream_down_instead_of_failing_it(start, connect, stream):
    stub = connect(start(queue_size=1, enqueue_timeout_seconds=30))
    acks = list(stub.Train(train_batches(stream, 0)))
    assert len(acks) == 15 and all(a.applied for a in acks)


def test_predictions_beyond_the_concurrency_limit_are_shed(start, connect, stream):
    stub = connect(start(max_concurrent_predictions=1))
    list(stub.Train(train_batches(stream, 0, limit=1)))
    release = threading.Event()
    chunks = [pb.EvaluateChunk(samples=c.samples, labels=c.labels) for c in eval_chunks(stream, 0, chunk=100)]

    def slow_chunks():
        yield chunks[0]
        release.wait(10)
        yield chunks[1]

    result = {}
    evaluating = threading.Thread(target=lambda: result.update(r=stub.Evaluate(slow_chunks())))
    evaluating.start()
    x = encode_samples(stream.buckets[0].test.batch(torch.arange(3))[0])
    deadline = time.monotonic() + 10
    while True:  # until the Evaluate call holds the only slot
        try:
            stub.Predict(pb.PredictRequest(samples=x))
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry with backoff" in e.details()
            assert "(max_concurrent_predictions)" in e.details()
            break
        assert time.monotonic() < deadline
    release.set()
    evaluating.join()
    assert result["r"].total == 200
    assert len(stub.Predict(pb.PredictRequest(samples=x)).predictions) == 3


def test_the_snapshot_is_a_copy_training_never_touches(stream):
    from cl_engine import Learner
    from server.snapshot import Snapshot

    learner = Learner(LearnerConfig(device="cpu", lr=0.5), (1, 8, 8), 10)
    snapshot = Snapshot.of(learner.model, learner.version, learner.device)
    x, y = stream.buckets[0].train.batch(torch.arange(20))
    before = snapshot.logits(x)
    learner.observe(x, y, 0)
    assert torch.equal(snapshot.logits(x), before) and not torch.equal(learner.logits(x), before)
    assert not any(p.requires_grad for p in snapshot.model.parameters()) and not snapshot.model.training


def test_snapshots_are_reused_only_when_no_call_reads_them(stream):
    """Publishing refreshes a retired snapshot in place instead of copying the module again, but a
    snapshot that a call is answering from stays exactly as it was published."""
    from cl_engine import Learner
    from server.snapshot import SnapshotHolder

    learner = Learner(LearnerConfig(device="cpu", lr=0.5), (1, 8, 8), 10)
    holder = SnapshotHolder()
    x, y = stream.buckets[0].train.batch(torch.arange(40))
    holder.publish_model(learner.model, learner.version, learner.device)
    with holder.reading() as held:
        held_logits, held_version = held.logits(x), held.version
        seen = set()
        for k in range(6):
            learner.observe(x[k * 5: k * 5 + 5], y[k * 5: k * 5 + 5], 0)
            holder.publish_model(learner.model, learner.version, learner.device)
            seen.add(id(holder.current()))
            with holder.reading() as now:
                assert now.version == learner.version and torch.equal(now.logits(x), learner.logits(x))
        assert held.version == held_version and torch.equal(held.logits(x), held_logits)
    assert len(seen) <= SnapshotHolder.SPARES  # six publishes, the held one never among the reused
    assert id(held) not in seen
    other = Learner(LearnerConfig(device="cpu", lr=0.5, seed=1), (1, 8, 8), 10)  # a restored or new learner
    holder.publish_model(other.model, other.version, other.device)
    with holder.reading() as now:
        assert torch.equal(now.logits(x), other.logits(x)) and now.model is not other.model


def test_each_batch_is_checked_once_on_its_way_and_a_bad_one_is_still_refused(start, connect, stream, monkeypatch):
    """The worker checks a batch (answering INVALID_ARGUMENT) and trains it with observe_checked: one
    check per batch through the real server, not one more inside the learner; a bad batch is still
    refused, and nothing of it is applied."""
    from cl_engine.learner import Learner

    checks = []
    check_batch = Learner.check_batch
    monkeypatch.setattr(Learner, "check_batch", lambda self, x, y: (checks.append(len(y)), check_batch(self, x, y)))
    stub = connect(start())
    acks = list(stub.Train(train_batches(stream, 0, limit=5)))
    assert [a.applied for a in acks] == [True] * 5 and checks == [10] * 5
    x, y = stream.buckets[0].train.batch(torch.arange(10))
    x[3, 0, 0, 0] = float("nan")
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Train(iter([pb.TrainBatch(stream_id="s", sequence=6, bucket=0, samples=encode_samples(x),
                                            labels=y.tolist())])))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "NaN" in e.value.details()
    assert stub.GetStatus(pb.GetStatusRequest()).batches_trained == 5
