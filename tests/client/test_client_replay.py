"""A full stream played to the real server: the same matrix as the in-process run, every batch
exactly once, predictions recorded during training, and a report with valid figures."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from cl_engine import run_stream
from client.api import Client
from client.cli import main
from client.replay import Replay, ReplayOptions, Schedule
from client.report import build_report, write_report
from client_helpers import learner, start_service, target

EPOCHS, QUERY_EVERY = 2, 4


@pytest.fixture(scope="module")
def live(small_stream, tmp_path_factory):
    """One replay of the small stream (2 epochs per bucket) against a live server, and its report."""
    config = learner()
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("CLSTREAM_")]:
            mp.delenv(key)
        service = start_service(config)
    try:
        with Client(target(service)) as client:
            # seed=None: the schedule takes the server's learner seed (3), as `clstream-client stream` does.
            result = Replay(client, small_stream, ReplayOptions(epochs=EPOCHS, query_every=QUERY_EVERY,
                                                                 progress=False)).run()
            report = build_report(result, config={"dataset": "digits-rotated"})
            directory = tmp_path_factory.mktemp("report")
            paths = write_report(directory, report)
            yield {"config": config, "result": result, "report": report, "paths": paths, "dir": directory,
                   "client": client, "service": service}
    finally:
        service.stop(grace=0.5)


@pytest.fixture(scope="module")
def reference(live, small_stream):
    return run_stream(small_stream, live["config"], batch_size=10, epochs=EPOCHS, progress=False)


def test_the_matrix_equals_the_in_process_run(live, reference):
    report = live["report"]
    np.testing.assert_allclose(report["accuracy_matrix"], reference["accuracy_matrix"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(report["initial_accuracy"], reference["initial_accuracy"], rtol=0, atol=1e-9)
    R = np.array(report["accuracy_matrix"])
    assert R.shape == (3, 3) and np.isfinite(R).all()
    for key, value in reference["metrics"].items():
        assert report["metrics"][key] == pytest.approx(value, abs=1e-9, nan_ok=True), key
    assert report["samples_trained"] == reference["samples_trained"] == 3 * 200 * EPOCHS
    assert report["batches_trained"] == reference["batches_trained"]
    assert report["buffer"]["by_bucket"] == reference["buffer"]["by_bucket"]
    assert report["prequential_accuracy"] == pytest.approx(reference["prequential_accuracy"], abs=1e-12)


def test_every_batch_once_with_its_position_as_sequence(live, small_stream):
    r = live["result"]
    schedule = Schedule([200, 200, 200], 10, EPOCHS, 3)
    assert r.seed == 3 and schedule.first == [1, 41, 81] and schedule.total_batches == 120
    assert sorted(r.acks) == list(range(1, 121))
    assert [r.acks[s]["bucket"] for s in (1, 40, 41, 81, 120)] == [0, 0, 1, 2, 2]
    assert r.duplicates == r.retrained == 0 and not r.resumes and not r.skipped_buckets
    assert r.final_status.applied_sequences == {r.stream_id: 120}
    assert [e["bucket"] for e in r.bucket_ends] == [0, 1, 2]
    assert [e["samples"] for e in r.bucket_ends] == [400, 800, 1200]


def test_predictions_during_training_are_recorded(live):
    r = live["result"]
    queries = r.queries
    assert len(queries) == 120 // QUERY_EVERY and not r.query_failures
    assert [q["sequence"] for q in queries] == list(range(1, 121, QUERY_EVERY))
    versions = [q["model_version"] for q in queries]
    assert versions == sorted(versions), "a later prediction came from an older model"
    assert versions[0] == 0 and len(set(versions)) > 5 and versions[-1] < 120  # answered while learning
    for q in queries:
        assert 1 <= q["samples"] <= 32 and 0.0 <= q["accuracy"] <= 1.0 and q["latency_seconds"] > 0
        assert 0 <= q["lag_batches"] <= q["sequence"] - 1
    served = live["report"]["served"]
    assert served["queries"] == len(queries) and served["samples"] == sum(q["samples"] for q in queries)
    # the queries send their labels: the server scored exactly what the client recorded
    registry = live["service"].metrics.registry
    counted = {o: registry.get_sample_value("clstream_served_samples_total", {"outcome": o})
               for o in ("correct", "wrong")}
    correct = sum(round(q["accuracy"] * q["samples"]) for q in queries)
    assert counted == {"correct": correct, "wrong": served["samples"] - correct}
    lat = served["latency_seconds"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]


def test_the_report_has_the_in_process_keys_and_the_served_ones(live, reference):
    on_disk = json.loads((live["dir"] / "report.json").read_text())
    assert set(reference) <= set(on_disk), set(reference) - set(on_disk)
    for key in ("served", "model_versions", "timeline", "resumes", "samples_per_second", "wall_seconds"):
        assert key in on_disk
    assert on_disk["strategy"] == "replay" and on_disk["config"]["dataset"] == "digits-rotated"
    assert on_disk["config"]["epochs"] == EPOCHS and on_disk["config"]["seed"] == 3
    assert set(reference["config"]) - {"device_used"} <= set(on_disk["config"])  # the learner's, as in-process
    assert "port" not in on_disk["config"] and "port" in on_disk["server"]["settings"]  # the server's apart
    assert on_disk["samples_per_second"] > 0 and on_disk["model_versions"]["final"] == 120
    assert len(on_disk["timeline"]["acks"]["sequence"]) == 120
    assert on_disk["figures"] == ["accuracy_matrix.png", "accuracy_over_time.png", "buffer_composition.png"]


def test_the_figures_are_pngs_that_decode(live):
    for name in live["report"].get("figures") or json.loads((live["dir"] / "report.json").read_text())["figures"]:
        with Image.open(live["dir"] / name) as image:
            image.load()
            assert image.format == "PNG" and image.width >= 400 and image.height >= 300
            assert sum(1 for n in image.convert("L").histogram() if n) > 20  # something was drawn


def test_figures_are_drawn_again_from_a_recorded_report(live, tmp_path, capsys):
    assert main(["figures", str(live["dir"] / "report.json"), "--out", str(tmp_path)]) == 0
    drawn = sorted(p.name for p in tmp_path.glob("*.png"))
    assert drawn == ["accuracy_matrix.png", "accuracy_over_time.png", "buffer_composition.png"]


def test_running_the_same_stream_again_resumes_and_trains_nothing(live, small_stream):
    client = live["client"]
    before = client.status()
    again = Replay(client, small_stream, ReplayOptions(epochs=EPOCHS, query_every=0, progress=False)).run()
    assert again.stream_id == live["result"].stream_id  # derived from stream and schedule: the same
    assert again.skipped_buckets == [0, 1, 2] and not again.acks and not again.bucket_ends
    after = client.status()
    assert after.samples_trained == before.samples_trained and after.model_version == before.model_version
    assert not any(math.isnan(a) for row in after.accuracy_matrix for a in row)


# -- what the figures say (drawn from the recorded report, inspected as matplotlib objects) ----------------------

@pytest.fixture
def recorded(live):
    return json.loads((live["dir"] / "report.json").read_text())


def test_the_matrix_colour_bar_is_in_percent_as_the_cells(recorded):
    from client.figures import matrix_figure

    fig = matrix_figure(recorded)
    [bar] = [ax for ax in fig.axes if ax.get_ylabel() == "accuracy (%)"]
    fig.canvas.draw()
    ticks = [t.get_text() for t in bar.get_yticklabels() if t.get_text()]
    assert ticks and all(0 <= int(t) <= 100 for t in ticks) and "100" in ticks, ticks
    cells = {t.get_text() for t in fig.axes[0].texts}
    assert f"{100 * recorded['accuracy_matrix'][0][0]:.0f}" in cells


def test_the_buffer_figure_names_its_axes_and_the_memory_of_its_strategy(recorded):
    from client.figures import buffer_figure

    [ax] = buffer_figure(recorded).axes
    assert ax.get_xlabel() and ax.get_ylabel() == "samples in memory"
    assert ax.get_title().startswith("replay memory by bucket of origin")
    assert any(t.get_text() == "capacity 150" for t in ax.get_legend().get_texts())
    [ax] = buffer_figure({**recorded, "strategy": "gem"}).axes  # GEM's memory: per bucket, no shared capacity
    assert ax.get_title().startswith("episodic memory by bucket of origin") and ax.get_xlabel()
    assert not any("capacity" in t.get_text() for t in ax.get_legend().get_texts()) and not ax.lines


def test_a_served_point_at_the_start_is_not_hidden_on_the_y_axis(recorded):
    from client.figures import over_time_figure

    queries = recorded["timeline"]["queries"]
    single = {k: v[:1] for k, v in queries.items()}
    single["position"] = [0]
    report = {**recorded, "timeline": {**recorded["timeline"], "queries": single}}
    ax = over_time_figure(report).axes[0]
    [served] = [line for line in ax.lines if line.get_label().startswith("served")]
    assert list(served.get_xdata()) == [0] and ax.get_xlim()[0] < 0 < ax.get_xlim()[1]


def test_a_partial_last_batch_replays_a_full_memory_batch_through_the_server(service, small_stream):
    """Batches of 7 leave each 200-sample bucket a last batch of 4, which replays a full batch of 7 memories
    (the bucket's batch size, docs/engine.md): the server at its default memory batch trains matrix for
    matrix as the in-process run told to replay 7 memories every step."""
    config = learner()
    with Client(target(service(config))) as client:
        result = Replay(client, small_stream, ReplayOptions(batch_size=7, query_every=0, progress=False)).run()
    served = build_report(result, config={"dataset": "digits-rotated"})
    reference = run_stream(small_stream, learner(replay_batch_size=7), batch_size=7, progress=False)
    assert reference["batches_trained"] == 3 * 29  # 28 of 7 and one of 4 a bucket
    np.testing.assert_allclose(served["accuracy_matrix"], reference["accuracy_matrix"], rtol=0, atol=1e-9)
    assert served["buffer"]["by_bucket"] == reference["buffer"]["by_bucket"]
