"""A live server trains a stream bucket by bucket, answers in between, and matches the in-process run."""
from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest
import torch

from cl_engine import LearnerConfig, run_stream
from clstream_proto import continual_learner_pb2 as pb
from server.codec import encode_samples
from service_helpers import eval_chunks, register_all, run_stream_through, schema_of, train_batches


def test_trains_bucket_by_bucket_with_acks(start, connect, stream):
    stub = connect(start(momentum=0.9))
    register_all(stub, stream)
    sequence, samples = 1, 0
    for bucket in range(len(stream.buckets)):
        sent = list(train_batches(stream, bucket, first_sequence=sequence))
        acks = list(stub.Train(iter(sent)))
        assert [a.sequence for a in acks] == [b.sequence for b in sent]
        assert all(a.applied and not a.duplicate and a.stream_id == "s" for a in acks)
        versions = [a.model_version for a in acks]
        assert versions == list(range(versions[0], versions[0] + len(acks)))
        for ack, batch in zip(acks, sent):
            samples += len(batch.labels)
            assert ack.samples_trained == samples and ack.applied_sequence == batch.sequence
            assert 0.0 <= ack.accuracy <= 1.0 and np.isfinite(ack.loss) and ack.loss > 0
        sequence += len(sent)
        end = stub.EndBucket(pb.EndBucketRequest(bucket=bucket, bucket_size=len(stream.buckets[bucket].train)))
        assert end.bucket == bucket and end.open_bucket == bucket + 1 and not end.already_ended
        assert len(end.row.accuracy) == len(stream.buckets) and all(0 <= a <= 1 for a in end.row.accuracy)
    status = stub.GetStatus(pb.GetStatusRequest())
    assert status.samples_trained == samples == sum(len(b.train) for b in stream.buckets)
    assert status.open_bucket == 3 and status.applied_sequences == {"s": sequence - 1}
    # Registered eval sets fill the matrix: one row per bucket, one column per held-out set.
    R = np.array([r.accuracy for r in status.accuracy_matrix])
    assert R.shape == (3, 3) and np.isfinite(R).all() and np.isfinite(status.initial_accuracy.accuracy).all()
    assert R[2, 2] > 0.3  # it learned something (chance is 0.1)
    assert status.metrics.acc == pytest.approx(R[2].mean())
    assert status.metrics.in_domain == pytest.approx(np.diag(R).mean())
    assert list(status.eval_buckets) == [0, 1, 2] and status.buffer.size > 0
    assert sum(status.buffer.by_bucket.values()) == status.buffer.size
    assert len(status.forgetting_per_bucket) == 2


@pytest.mark.parametrize("strategy, learner_process", [("replay", False), ("gem", False), ("replay", True),
                                                       ("gem", True)])
def test_service_matches_the_in_process_run(start, connect, stream, strategy, learner_process):
    """Same seed, same batches (cl_engine.schedule), same config: the same accuracy matrix, with the
    learner in a thread of the server or in a process of its own."""
    options = dict(strategy=strategy, lr=0.1, buffer_capacity=200, memory_per_bucket=40, seed=3, device="cpu")
    reference = run_stream(stream, LearnerConfig(**options), batch_size=10, epochs=1, progress=False)
    status, R = run_stream_through(connect(start(learner_process=learner_process, **options)), stream, seed=3)
    np.testing.assert_allclose(R, np.array(reference["accuracy_matrix"]), rtol=0, atol=1e-9)
    np.testing.assert_allclose(status.initial_accuracy.accuracy, reference["initial_accuracy"], rtol=0, atol=1e-9)
    assert status.samples_trained == reference["samples_trained"]
    assert status.gem_projections == reference["gem_projections"]
    assert status.metrics.bwt == pytest.approx(reference["metrics"]["bwt"], abs=1e-9)
    assert status.metrics.clear_score == pytest.approx(reference["metrics"]["clear_score"], abs=1e-9)


@pytest.mark.parametrize("learner_process", [False, True], ids=["learner-thread", "learner-process"])
def test_predictions_during_training_carry_increasing_versions(start, connect, stream, learner_process):
    service = start(learner_process=learner_process)
    stub = connect(service)
    probe = encode_samples(stream.buckets[0].test.batch(torch.arange(8))[0])
    list(stub.Train(train_batches(stream, 0, limit=1)))  # declares the schema, builds the model
    seen: list[int] = []
    done = threading.Event()

    def predict_loop():
        while not done.is_set():
            reply = stub.Predict(pb.PredictRequest(samples=probe, top_k=3))
            assert len(reply.predictions) == 8
            for p in reply.predictions:
                assert len(p.top_labels) == 3 and p.top_labels[0] == p.label and p.class_name == str(p.label)
                assert list(p.top_probabilities) == sorted(p.top_probabilities, reverse=True)
                assert 0 < sum(p.top_probabilities) <= 1.0 + 1e-5
            seen.append(reply.model_version)

    reader = threading.Thread(target=predict_loop)
    reader.start()
    try:
        for bucket in range(2):
            list(stub.Train(train_batches(stream, bucket, first_sequence=2 + 15 * bucket)))
            stub.EndBucket(pb.EndBucketRequest(bucket=bucket))
    finally:
        done.set()
        reader.join()
    final = stub.GetStatus(pb.GetStatusRequest()).model_version
    assert seen == sorted(seen), "a later prediction came from an older model"
    assert len(set(seen)) >= 3 and seen[0] >= 1 and seen[-1] <= final
    assert stub.Predict(pb.PredictRequest(samples=probe)).model_version == final


def test_a_step_the_guard_refuses_is_acked_consumed_but_not_learned(start, connect, stream):
    """A learning rate that overflows every weight: each batch is applied (its sequence counts, exactly-once
    holds) but not learned; the ack names the guard's reason, and the model and its version stay as they were."""
    stub = connect(start(lr=3e38, max_update_ratio=0))  # the update-size guard off: the weights overflow
    acks = list(stub.Train(train_batches(stream, 0, limit=3)))
    assert [(a.applied, a.learned, a.skip_reason, a.applied_sequence) for a in acks] == [
        (True, False, "non_finite_weights", s) for s in (1, 2, 3)]
    assert all(a.model_version == 0 and a.durable_sequence == 0 for a in acks)
    status = stub.GetStatus(pb.GetStatusRequest())
    assert status.applied_sequences["s"] == 3 and status.model_version == 0


def test_a_duplicate_batch_is_not_trained_twice(start, connect, stream):
    stub = connect(start())
    batches = list(train_batches(stream, 0, limit=4))
    first = list(stub.Train(iter(batches)))
    before = stub.GetStatus(pb.GetStatusRequest())
    again = list(stub.Train(iter(batches[1:] + list(train_batches(stream, 0, limit=5))[4:])))
    assert [a.duplicate for a in again] == [True, True, True, False]
    assert all(not a.applied for a in again[:3]) and all(np.isnan(a.accuracy) for a in again[:3])
    assert again[0].model_version == first[-1].model_version and again[0].applied_sequence == 4
    after = stub.GetStatus(pb.GetStatusRequest())
    assert after.samples_trained == before.samples_trained + 10
    assert after.batches_trained == before.batches_trained + 1
    # Streams are independent: the same sequence under another stream_id is new.
    other = list(stub.Train(train_batches(stream, 0, stream_id="other", limit=1)))
    assert other[0].applied and stub.GetStatus(pb.GetStatusRequest()).applied_sequences == {"s": 5, "other": 1}


def test_end_bucket_is_idempotent_and_in_order(start, connect, stream):
    stub = connect(start())
    register_all(stub, stream)
    list(stub.Train(train_batches(stream, 0, limit=3)))
    first = stub.EndBucket(pb.EndBucketRequest(bucket=0))
    again = stub.EndBucket(pb.EndBucketRequest(bucket=0))
    assert again.already_ended and list(again.row.accuracy) == list(first.row.accuracy)
    assert stub.GetStatus(pb.GetStatusRequest()).open_bucket == 1
    with pytest.raises(grpc.RpcError) as e:
        stub.EndBucket(pb.EndBucketRequest(bucket=2))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "bucket 1" in e.value.details()


def test_eval_sets_are_fixed_once_registered(start, connect, stream):
    stub = connect(start())
    r = stub.RegisterEvalSet(eval_chunks(stream, 0))
    assert r.num_samples == len(stream.buckets[0].test) and not r.already_registered
    assert stub.RegisterEvalSet(eval_chunks(stream, 0)).already_registered
    other = (pb.EvalSetChunk(bucket=0, samples=c.samples, labels=c.labels) for c in eval_chunks(stream, 1))
    with pytest.raises(grpc.RpcError) as e:
        stub.RegisterEvalSet(other)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert list(stub.GetStatus(pb.GetStatusRequest()).eval_buckets) == [0]


def test_evaluate_agrees_with_the_matrix(start, connect, stream):
    stub = connect(start())
    register_all(stub, stream)
    list(stub.Train(train_batches(stream, 0)))
    row = stub.EndBucket(pb.EndBucketRequest(bucket=0)).row.accuracy
    for j in range(3):
        chunks = (pb.EvaluateChunk(samples=c.samples, labels=c.labels) for c in eval_chunks(stream, j, chunk=100))
        r = stub.Evaluate(chunks)
        assert r.total == len(stream.buckets[j].test) and r.accuracy == pytest.approx(row[j], abs=1e-12)
        assert r.correct == round(r.accuracy * r.total) and r.loss > 0


def test_schema_from_settings_serves_before_any_training(start, connect, stream):
    service = start(class_names=stream.class_names, input_shape=list(stream.input_shape))
    stub = connect(service)
    x = stream.buckets[0].test.batch(torch.arange(2))[0]
    reply = stub.Predict(pb.PredictRequest(samples=encode_samples(x)))
    assert reply.model_version == 0 and len(reply.predictions) == 2
    # Batches without a schema are fine; a different declared schema is FAILED_PRECONDITION, naming both.
    plain = [pb.TrainBatch(stream_id=b.stream_id, sequence=b.sequence, bucket=b.bucket, samples=b.samples,
                           labels=b.labels) for b in train_batches(stream, 0, limit=2)]
    assert len(list(stub.Train(iter(plain)))) == 2
    wrong = pb.TrainBatch(stream_id="s", sequence=3, bucket=0, samples=plain[0].samples, labels=plain[0].labels,
                          schema=pb.Schema(class_names=[str(i) for i in range(11)], input_shape=[1, 8, 8]))
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Train(iter([wrong])))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "classes: 11" in e.value.details() and "classes: 10" in e.value.details()


def test_a_stream_of_png_images_trains_and_predicts(start, connect, stream):
    """Compressed images travel as PNG bytes and are decoded by the server to the schema's shape."""
    import io

    from PIL import Image

    def png(sample: torch.Tensor) -> bytes:
        buf = io.BytesIO()
        Image.fromarray((sample[0] * 255).round().clamp(0, 255).to(torch.uint8).numpy(), "L").save(buf, "PNG")
        return buf.getvalue()

    stub = connect(start())
    train = stream.buckets[0].train
    batches = []
    for k in range(5):
        x, y = train.batch(torch.arange(10 * k, 10 * k + 10))
        batches.append(pb.TrainBatch(stream_id="images", sequence=k + 1, bucket=0, labels=y.tolist(),
                                     samples=pb.Samples(images=pb.EncodedImages(images=[png(s) for s in x])),
                                     schema=schema_of(stream)))
    acks = list(stub.Train(iter(batches)))
    assert [a.model_version for a in acks] == [1, 2, 3, 4, 5]
    x = stream.buckets[0].test.batch(torch.arange(3))[0]
    by_image = stub.Predict(pb.PredictRequest(samples=pb.Samples(images=pb.EncodedImages(images=[png(s) for s in x])),
                                              top_k=10))
    by_tensor = stub.Predict(pb.PredictRequest(samples=encode_samples((x * 255).round() / 255), top_k=10))
    for a, b in zip(by_image.predictions, by_tensor.predictions):  # the same pixels either way
        assert list(a.top_labels) == list(b.top_labels)
        assert np.allclose(a.top_probabilities, b.top_probabilities, atol=1e-6)


def test_large_images_are_decoded_by_the_decode_threads(start, connect, stream):
    """Photo-sized PNGs (past the parallel threshold) go through the server's decode threads: a
    Train stream of them is applied in order (decoded by the worker's threads, where each batch is
    applied), and Predict answers exactly as for the same pixels decoded in order and sent as a tensor
    (decoded by the receiving side's threads)."""
    from server.codec import DecodeLimits, decode_images
    from test_service_codec import noise_png

    service = start(decode_threads=2)
    stub = connect(service)
    rng = np.random.default_rng(0)
    batches = [pb.TrainBatch(stream_id="photos", sequence=k + 1, bucket=0, labels=rng.integers(0, 10, 4).tolist(),
                             samples=pb.Samples(images=pb.EncodedImages(images=[noise_png(160, 4 * k + i)
                                                                                for i in range(4)])),
                             schema=schema_of(stream)) for k in range(3)]
    assert [a.model_version for a in stub.Train(iter(batches))] == [1, 2, 3]
    assert any(t.name.startswith("clstream-train-decode") for t in threading.enumerate())
    files = pb.EncodedImages(images=[noise_png(160, 100 + i) for i in range(4)])
    by_image = stub.Predict(pb.PredictRequest(samples=pb.Samples(images=files), top_k=10))
    assert any(t.name.startswith("clstream-decode") for t in threading.enumerate())
    pixels = decode_images(files, "samples.images", (1, 8, 8), DecodeLimits())  # in order, here
    by_tensor = stub.Predict(pb.PredictRequest(samples=encode_samples(pixels), top_k=10))
    for a, b in zip(by_image.predictions, by_tensor.predictions, strict=True):
        assert list(a.top_labels) == list(b.top_labels) and list(a.top_probabilities) == list(b.top_probabilities)
