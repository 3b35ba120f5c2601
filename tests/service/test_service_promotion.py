"""Guarded promotion through the real server (server/promotion.py): a bucket trained on shuffled labels
is not promoted, serving stays on the last good version (also after a restart from the checkpoint);
a bucket of good labels is promoted. The canary set is the registered held-out sets."""
from __future__ import annotations

import math

import pytest
import torch

from client.api import Batch, Client, Schema
from service_helpers import base_settings  # noqa: F401  (the `start` fixture builds on it)

EPOCHS = 6
GUARDED = dict(strategy="naive", model="mlp", lr=0.1, seed=1, device="cpu",
               guarded_promotion=True, promotion_every_batches=1000)  # checks only at bucket ends


def batches(stream, bucket: int, first: int, shuffled: bool = False):
    train = stream.buckets[bucket].train
    g = torch.Generator().manual_seed(bucket)
    seq = first
    for _ in range(EPOCHS):
        order = torch.randperm(len(train), generator=g)
        for s in range(0, len(train), 10):
            x, y = train.batch(order[s:s + 10], train=True)
            if shuffled:
                y = torch.randint(0, stream.num_classes, y.shape, generator=g)
            yield Batch("s", seq, bucket, x, y)
            seq += 1


def train_bucket(client: Client, stream, bucket: int, shuffled: bool = False) -> None:
    first = client.status().applied_sequences.get("s", 0) + 1
    acks = list(client.train(batches(stream, bucket, first, shuffled),
                             schema=Schema(tuple(stream.class_names), tuple(stream.input_shape))))
    assert all(a.learned for a in acks)
    client.end_bucket(bucket)


def served_accuracy(client: Client, stream) -> tuple[float, int]:
    x, y = zip(*(s.test.batch(torch.arange(len(s.test))) for s in stream.buckets))
    r = client.evaluate(torch.cat(x), torch.cat(y))
    return r.accuracy, r.model_version


def trained_on_bucket_0(start, stream, **settings):
    service = start(**GUARDED, **settings)
    client = Client(f"127.0.0.1:{service.port}")
    for j, s in enumerate(stream.buckets):
        client.register_eval_set(j, *s.test.batch(torch.arange(len(s.test))),
                                 schema=Schema(tuple(stream.class_names), tuple(stream.input_shape)))
    train_bucket(client, stream, 0)
    status = client.status()
    assert status.promotion["promotions"] == 1 and status.serving_version == status.model_version
    return service, client


def test_a_bucket_of_good_labels_is_promoted(start, stream):
    service, client = trained_on_bucket_0(start, stream)
    before, _ = served_accuracy(client, stream)
    train_bucket(client, stream, 1)
    status = client.status()
    assert status.promotion["promotions"] == 2 and status.promotion["rejections"] == 0
    assert status.serving_version == status.model_version
    after, version = served_accuracy(client, stream)
    assert version == status.model_version and after > before
    assert status.promotion["canary_accuracy"] == pytest.approx(after)
    client.close()


@pytest.mark.parametrize("learner_process", [False, True], ids=["thread", "learner-process"])
def test_a_bucket_with_shuffled_labels_is_not_promoted_and_stays_out_after_a_restart(start, stream, tmp_path,
                                                                                     learner_process):
    service, client = trained_on_bucket_0(start, stream, checkpoint_dir=tmp_path, learner_process=learner_process)
    good, good_version = served_accuracy(client, stream)
    train_bucket(client, stream, 1, shuffled=True)
    status = client.status()
    assert status.promotion["rejections"] == 1 and status.promotion["promotions"] == 1, status.promotion
    assert status.model_version > status.serving_version == good_version
    assert status.promotion["canary_accuracy"] < status.promotion["serving_canary_accuracy"] - 0.02
    assert "canary accuracy" in status.promotion["last_rejection"]
    assert served_accuracy(client, stream) == (good, good_version)  # Evaluate answers from the good version
    prediction = client.predict(stream.buckets[0].test.batch(torch.arange(20))[0], top_k=3)
    assert prediction.model_version == good_version
    assert all(math.isfinite(p) for q in prediction.predictions for p in q.top_probabilities)
    client.close()
    service.stop(grace=0.5)
    restarted = start(**GUARDED, checkpoint_dir=tmp_path, learner_process=learner_process)
    with Client(f"127.0.0.1:{restarted.port}") as client:
        status = client.status()
        assert status.serving_version == good_version < status.model_version
        assert served_accuracy(client, stream) == (good, good_version)


def test_without_guarded_promotion_the_shuffled_bucket_is_served(start, stream):
    service = start(**{**GUARDED, "guarded_promotion": False})
    with Client(f"127.0.0.1:{service.port}") as client:
        train_bucket(client, stream, 0)
        train_bucket(client, stream, 1, shuffled=True)
        status = client.status()
        assert status.serving_version == status.model_version
        assert not status.promotion["enabled"] and status.promotion["rejections"] == 0


@pytest.mark.parametrize("learner_process", [False, True], ids=["thread", "learner-process"])
def test_a_rejected_learner_rolls_back_to_the_serving_version(start, stream, learner_process):
    service, client = trained_on_bucket_0(start, stream, learner_process=learner_process)
    good, good_version = served_accuracy(client, stream)
    train_bucket(client, stream, 1, shuffled=True)
    status = client.status()
    assert status.rollback_versions == [good_version]  # under guarded promotion: the promoted versions
    client.rollback(good_version)
    status = client.status()
    assert status.model_version == status.serving_version == good_version and status.open_bucket == 1
    assert status.promotion["rejections"] == 1
    assert served_accuracy(client, stream) == (good, good_version)
    train_bucket(client, stream, 1)  # the bucket again, with good labels: promoted
    status = client.status()
    assert status.promotion["promotions"] == 2 and status.serving_version == status.model_version
    client.close()
