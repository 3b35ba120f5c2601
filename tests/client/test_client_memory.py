"""Through the service: the server's memory keeps what its retention asks of every bucket, a capacity that
cuts it is announced by the replay client at start and shows in GetStatus and the report (kept vs asked),
and epochs never put one sample twice in the memory."""
from __future__ import annotations

import pytest

from client.api import Client
from client.replay import Replay, ReplayOptions
from client.report import build_report
from client_helpers import learner, target


def replay(service, stream, epochs=1, **config):
    server = service(learner(**{"buffer_capacity": None, **config}))
    with Client(target(server)) as client:
        result = Replay(client, stream, ReplayOptions(epochs=epochs, query_every=0, progress=False)).run()
        return build_report(result), client.status()


def test_the_servers_memory_holds_every_buckets_count_with_no_capacity(service, small_stream, capsys):
    report, status = replay(service, small_stream, strategy="gem", memory_per_bucket=180)
    assert status.buffer["by_bucket"] == status.buffer["asked_by_bucket"] == {0: 180, 1: 180, 2: 180}
    assert status.buffer["bounded"] is False and status.buffer["size"] == 540
    assert report["buffer"]["cut_warning"] is None and "warning" not in capsys.readouterr().err
    assert report["config"]["within_bucket"] == "shuffled"  # the report says which order the buckets had


def test_a_capacity_that_cuts_a_share_is_announced_by_the_client_and_reported(service, small_stream, capsys, caplog):
    # half of each 200-sample bucket asked for, a capacity that holds two and a half buckets' shares
    report, status = replay(service, small_stream, buffer_capacity=250, retention="ratio", retain_ratio=0.5)
    err = capsys.readouterr().err
    warning = next(line for line in err.splitlines() if line.startswith("warning:"))
    assert "capacity 250" in warning and "300 asked" in warning and "from bucket 2 on" in warning
    kept, asked = status.buffer["by_bucket"], status.buffer["asked_by_bucket"]
    assert asked == {0: 100, 1: 100, 2: 100} and sum(kept.values()) == 250 and kept[2] < 100
    assert report["buffer"]["cut_warning"] in warning
    assert "holds fewer than asked, kept/asked per bucket" in caplog.text  # the server's log says so too


@pytest.mark.parametrize("config", [dict(buffer_capacity=1000), dict(retention="ratio", retain_ratio=1.0)],
                         ids=["reservoir", "ratio"])
def test_three_epochs_through_the_service_never_put_one_sample_twice(service, small_stream, config):
    _, status = replay(service, small_stream, epochs=3, **config)
    # every one of the 3 × 200 distinct samples is offered to the memory once: it holds each once
    assert status.buffer["by_bucket"] == {0: 200, 1: 200, 2: 200}
