"""--within-bucket: shuffled (seeded, every pass, the first too) by default; upload-time keeps a dated
stream's upload order for the first pass and is refused, in one line, for a stream without dates; the
report says which."""
import json

import pytest
import torch

from cl_engine.__main__ import main
from cl_engine.schedule import bucket_batches, pass_order
from cli_helpers import one_line_error
from test_streams_clear import write_current_split


def test_shuffled_is_a_seeded_permutation_every_pass_the_first_too():
    first = pass_order(50, seed=0, bucket=2, epoch=0)
    assert sorted(first.tolist()) == list(range(50)) and first.tolist() != list(range(50))
    assert torch.equal(first, pass_order(50, 0, 2, 0))  # reproducible
    assert not torch.equal(first, pass_order(50, 0, 2, 1)) and not torch.equal(first, pass_order(50, 1, 2, 0))
    assert torch.equal(torch.cat(list(bucket_batches(50, 8, 1, 0, 2))), first)


def test_upload_time_keeps_the_first_pass_in_stream_order_and_shuffles_the_rest():
    assert pass_order(50, 0, 2, 0, "upload-time").tolist() == list(range(50))
    assert torch.equal(pass_order(50, 0, 2, 1, "upload-time"), pass_order(50, 0, 2, 1))


@pytest.fixture(scope="module")
def dated(tmp_path_factory):
    root = tmp_path_factory.mktemp("dated") / "train"
    write_current_split(root, per_class=2, features=False)
    return root


def run(tmp_path, capsys, *args):
    report = tmp_path / "report.json"
    code = main(["run", *args, "--batch-size", "2", "--quiet", "--device", "cpu", "--report", str(report)])
    capsys.readouterr()
    assert code == 0
    return json.loads(report.read_text())


@pytest.mark.parametrize("within", ["shuffled", "upload-time"])
def test_the_report_says_which_and_the_orders_differ(dated, tmp_path, capsys, within):
    # naive: the order is all that differs between the runs (replay's memory batches, on this tiny fixture
    # that a replayed model learns whole, can end in the same matrix from either order)
    flags = ["--dataset", f"clear:{dated}", "--image-size", "8", "--model", "mlp", "--strategy", "naive"]
    report = run(tmp_path, capsys, *flags, "--within-bucket", within)
    assert report["config"]["within_bucket"] == within
    default = run(tmp_path, capsys, *flags)
    assert default["config"]["within_bucket"] == "shuffled"
    assert (default["accuracy_matrix"] == report["accuracy_matrix"]) == (within == "shuffled")


def test_upload_time_is_refused_for_a_stream_without_dates():
    err = one_line_error(["-m", "cl_engine", "run", "--dataset", "digits-rotated", "--within-bucket", "upload-time"])
    assert "--within-bucket upload-time" in err and "digits-rotated has no upload dates" in err
    assert "use --within-bucket shuffled" in err


def test_the_replay_client_refuses_it_too_before_contacting_a_server():
    err = one_line_error(["-m", "client", "stream", "--target", "127.0.0.1:9", "--dataset", "digits-rotated",
                          "--within-bucket", "upload-time"])
    assert "digits-rotated has no upload dates" in err


def test_upload_time_is_refused_for_a_clear_release_without_dates(tmp_path):
    import shutil

    from test_streams_clear import write_neurips2021

    root = tmp_path / "clear10-public"
    write_neurips2021(root, per_class=1)
    shutil.rmtree(root / "labeled_metadata")  # the release as shipped without its metadata: no upload dates
    err = one_line_error(["-m", "cl_engine", "run", "--dataset", f"clear:{root}", "--image-size", "8",
                          "--within-bucket", "upload-time"])
    assert "has 30 samples without an upload date" in err and "use --within-bucket shuffled" in err
