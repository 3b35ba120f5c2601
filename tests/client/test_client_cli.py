"""`clstream-client` from a shell: the demo's learner flags reach the server unchanged; stream,
status and predict against a real server; failures are one line and an exit code."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cl_engine import LearnerConfig, StreamOptions, build_stream, run_stream
from client.api import Client, Schema
from client.cli import build_parser, main
from client.demo import server_flags
from client.local_server import free_port, parse_ready_line
from cli_helpers import one_line_error
from client_helpers import STREAM, STREAM_FLAGS, learner, target
from server.settings import load_settings


@pytest.mark.parametrize("config", [
    LearnerConfig(),
    LearnerConfig(strategy="gem", memory_per_bucket=50, memory_strength=0.3, lr=0.05, seed=7, device="cpu"),
    LearnerConfig(strategy="replay", retention="ratio", retain_ratio=0.01, selection="margin", momentum=0.9,
                  weight_decay=1e-5, candidate_pool=300, replay_batch_size=16),
    LearnerConfig(strategy="naive", class_balanced=True, model="linear", qp_eps=1e-4, prequential_window=77),
])
def test_the_demo_hands_the_server_exactly_its_learner(config):
    assert load_settings(server_flags(config)).learner_config() == config


def test_demo_flags_are_the_engines():
    args = build_parser().parse_args(["demo", "--strategy", "agem", "--agem-sample-size", "64",
                                      "--dataset", "buckets-npz:x.npz", "--retain-ratio", "0.05"])
    from cl_engine.__main__ import learner_config

    config = learner_config(args)
    assert (config.strategy, config.agem_sample_size, config.retention) == ("agem", 64, "ratio")
    assert args.dataset == "buckets-npz:x.npz" and args.report == "out/demo" and args.threads == 1


def test_ready_line():
    assert parse_ready_line("clstream-server listening on 127.0.0.1:5005 metrics 127.0.0.1:9464\n") == (
        "127.0.0.1:5005", "127.0.0.1:9464")
    assert parse_ready_line("clstream-server listening on 127.0.0.1:5005") == ("127.0.0.1:5005", None)


def test_stream_status_and_predict_commands(service, tmp_path, capsys):
    s = service(learner())
    t = target(s)
    assert main(["stream", "--target", t, "--dataset", "digits-rotated", *STREAM_FLAGS, "--query-every", "5",
                 "--report", str(tmp_path), "--no-figures", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "accuracy matrix (%)" in out and "served 12 queries" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["samples_trained"] == 600 and report["config"]["target"] == t and "figures" not in report

    assert main(["status", "--target", t]) == 0
    out = capsys.readouterr().out
    assert "SERVING" in out and "model version 60" in out and "open bucket 3" in out and "accuracy matrix" in out
    assert main(["status", "--target", t, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["samples_trained"] == 600 and len(status["accuracy_matrix"]) == 3

    assert main(["predict", "--target", t, "--dataset", "digits-rotated", *STREAM_FLAGS, "--bucket", "2",
                 "--count", "4", "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and lines[0].startswith("bucket 2 test[0]") and "accuracy" in lines[-1]
    np.save(tmp_path / "x.npy", np.zeros((3, 1, 8, 8), dtype=np.float32))
    assert main(["predict", "--target", t, "--npy", str(tmp_path / "x.npy"), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["model_version"] == 60 and len(answer["predictions"]) == 3
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint8)).save(tmp_path / "digit.png")  # sent as PNG bytes
    assert main(["predict", "--target", t, "--image", str(tmp_path / "digit.png"), "--top-k", "1"]) == 0
    assert "digit.png" in capsys.readouterr().out


def test_failures_are_one_line_and_an_exit_code(capsys):
    assert main(["status", "--target", f"127.0.0.1:{free_port()}", "--retries", "1", "--timeout", "5"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: GetStatus: UNAVAILABLE") and "\n" not in err
    assert main(["stream", "--dataset", "no-such-stream"]) == 2
    assert "unknown dataset" in capsys.readouterr().err


# -- stream options: the iid order, --rate, progress bars --------------------------------------------

def test_stream_in_iid_order_trains_the_iid_stream_as_the_in_process_run(service, small_stream, tmp_path):
    config = learner()
    s = service(config)
    assert main(["stream", "--target", target(s), "--dataset", "digits-rotated", *STREAM_FLAGS, "--order", "iid",
                 "--query-every", "0", "--report", str(tmp_path), "--no-figures", "--quiet"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    iid = build_stream("digits-rotated", StreamOptions(**STREAM), "iid")
    reference = run_stream(iid, config, batch_size=10, epochs=1, progress=False)
    assert report["config"]["order"] == "iid" and report["samples_trained"] == reference["samples_trained"] == 600
    np.testing.assert_allclose(report["accuracy_matrix"], reference["accuracy_matrix"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(report["initial_accuracy"], reference["initial_accuracy"], rtol=0, atol=1e-9)
    time_order = run_stream(small_stream, config, batch_size=10, epochs=1, progress=False)
    assert not np.allclose(report["accuracy_matrix"], time_order["accuracy_matrix"])  # another stream indeed
    with Client(target(s)) as client:
        status = client.status()
    assert np.array(status.accuracy_matrix).shape == (3, 3) and status.samples_trained == 600
    [(stream_id, applied)] = status.applied_sequences.items()
    assert applied == 60 and "iid" in stream_id


def test_rate_paces_the_stream_to_at_most_that_many_samples_per_second(service, tmp_path):
    s = service(learner())
    rate, samples = 200.0, 2 * 40
    # A batch is as big as its bucket: each bucket is one batch, which must wait for its samples' time too.
    assert main(["stream", "--target", target(s), "--dataset", "digits-rotated", "--buckets", "2",
                 "--samples-per-bucket", "40", "--batch-size", "40", "--rate", str(rate), "--query-every", "0",
                 "--report", str(tmp_path), "--no-figures", "--quiet"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["samples_trained"] == samples
    assert report["train_seconds"] >= samples / rate  # a lower bound only: slow machines are slower, not faster
    assert report["samples_per_second"] <= rate


def test_progress_bars_for_buckets_and_batches_go_to_stderr(service, capsys):
    s = service(learner())
    assert main(["stream", "--target", target(s), "--dataset", "digits-rotated", "--buckets", "2",
                 "--samples-per-bucket", "50", "--query-every", "0"]) == 0
    captured = capsys.readouterr()
    err = captured.err
    assert "streaming digits-rotated" in err and "2 buckets, 100 training samples × 1 epoch(s)" in err
    assert "buckets:   0%|" in err and "0/2 [" in err and "2/2 [" in err  # the outer bar, from start to end
    for b in (1, 2):
        assert f"bucket {b}/2:   0%|" in err and "0/5 [" in err  # one bar per bucket, 5 batches of 10
        assert f"bucket {b}/2 ended: held-out accuracy" in err
    assert "it/s" not in err and ("batch/s" in err or "s/batch" in err)
    assert "buckets:" not in captured.out and "accuracy matrix (%)" in captured.out  # the results stay on stdout


# -- connection flags: bearer tokens, TLS, mutual TLS -------------------------------------------------

def test_token_flags_against_a_server_that_requires_one(service, tmp_path, capsys, monkeypatch):
    t = target(service(auth_tokens=["s3cret"]))
    (tmp_path / "token").write_text("s3cret\n")
    for flags in (["--token", "s3cret"], ["--token-file", str(tmp_path / "token")]):
        assert main(["status", "--target", t, "--json", *flags]) == 0, flags
        assert json.loads(capsys.readouterr().out)["health"] == "SERVING"
    monkeypatch.setenv("CLSTREAM_TOKEN", "s3cret")
    assert main(["status", "--target", t, "--json"]) == 0
    capsys.readouterr()
    monkeypatch.delenv("CLSTREAM_TOKEN")
    (tmp_path / "wrong").write_text("guess\n")
    for flags in ([], ["--token", "guess"], ["--token-file", str(tmp_path / "wrong")]):
        assert main(["status", "--target", t, *flags]) == 1, flags
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: GetStatus: UNAUTHENTICATED") and "bearer token" in err and "\n" not in err
    (tmp_path / "empty").write_text("")
    for name in ("empty", "missing"):
        assert main(["status", "--target", t, "--token-file", str(tmp_path / name)]) == 2, name
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and name in err and "\n" not in err


def test_tls_and_mutual_tls_flags(service, pki, small_stream, tmp_path, capsys):
    ca = ["--ca-file", str(pki / "ca.pem")]
    t = target(service(tls_cert_file=pki / "server.pem", tls_key_file=pki / "server.key"))
    assert main(["status", "--target", t, *ca, "--server-name", "localhost"]) == 0  # --ca-file implies --tls
    assert "SERVING" in capsys.readouterr().out
    assert main(["status", "--target", t, "--tls", *ca]) == 0  # the certificate names 127.0.0.1 too
    capsys.readouterr()
    for flags in ([], ["--ca-file", str(pki / "other-ca.pem")]):  # plaintext; a CA that did not sign it
        assert main(["status", "--target", t, *flags, "--retries", "1", "--timeout", "5"]) == 1, flags
        assert capsys.readouterr().err.startswith("error: GetStatus: UNAVAILABLE")

    mutual = target(service(tls_cert_file=pki / "server.pem", tls_key_file=pki / "server.key",
                            tls_client_ca_file=pki / "ca.pem", auth_tokens=["s3cret"]))
    me = [*ca, "--cert-file", str(pki / "client.pem"), "--key-file", str(pki / "client.key"), "--token", "s3cret"]
    # The whole stream command over mutual TLS with a token: held-out sets, Train streams, EndBucket, status.
    assert main(["stream", "--target", mutual, *me, "--dataset", "digits-rotated", "--buckets", "2",
                 "--samples-per-bucket", "20", "--query-every", "1", "--quiet"]) == 0
    assert "served 4 queries" in capsys.readouterr().out
    assert main(["status", "--target", mutual, *me, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["samples_trained"] == 40
    rogue = [*ca, "--cert-file", str(pki / "rogue.pem"), "--key-file", str(pki / "rogue.key"), "--token", "s3cret"]
    for flags in (me[:2] + me[-2:], rogue):  # no client certificate; one from another CA
        assert main(["status", "--target", mutual, *flags, "--retries", "1", "--timeout", "5"]) == 1
        assert capsys.readouterr().err.startswith("error: GetStatus: UNAVAILABLE")
    assert main(["status", "--target", mutual, *me[:4]]) == 2  # a certificate without its key
    assert "private key go together" in capsys.readouterr().err


# -- ordinary mistakes: one line naming what is wrong and what was expected, exit 2, nothing written --------------

@pytest.fixture(scope="module")
def mistakes(tmp_path_factory, small_stream):
    """Files a user may hand over by mistake: an engine report, a folder, a text file, an ordinary file."""
    from cl_engine.report import write_json

    folder = tmp_path_factory.mktemp("mistakes")
    write_json(folder / "engine" / "report.json", run_stream(small_stream, learner(), progress=False))
    (folder / "text.npy").write_text("not an array\n")
    (folder / "a-file").write_text("")
    np.save(folder / "x.npy", np.zeros((3, 1, 8, 8), dtype=np.float32))
    return folder


@pytest.mark.parametrize("args,words", [
    (["figures", "{d}/engine/report.json"], "has no timeline, as a report of `python -m cl_engine run` has not; "
                                            "expected the report.json of clstream-client stream or demo"),
    (["figures", "{d}"], "is a folder; expected the report.json of clstream-client stream or demo"),
    (["figures", "{d}/text.npy"], "is not JSON"),
    (["demo", "--report", "{d}/a-file"], "--report {d}/a-file is a file; expected a folder"),
    (["demo", "--device", "cuda:99"], "'cuda:99' asked for"),
    (["demo", "--device", "tpu"], "device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    (["demo", "--strategy", "replay", "--selection", "el2n"], "add --retain-ratio R (e.g. 0.05) or --retention"),
    (["demo", "--batch-size", "0"], "--batch-size, --epochs and --query-size must be >= 1"),
    (["stream", "--report", "{d}/a-file"], "--report {d}/a-file is a file; expected a folder"),
    (["stream", "--buckets", "0"], "--buckets must be at least 1, got 0"),
    (["predict", "--count", "0"], "--count must be at least 1, got 0"),
    (["predict", "--top-k", "0"], "--top-k must be at least 1, got 0"),
    (["predict", "--offset", "-1"], "--offset must be 0 or more, got -1"),
    (["predict", *STREAM_FLAGS, "--offset", "539"], "--offset 539 is past the 539 samples of bucket 0's test split"),
    (["predict", "--npy", "{d}/x.npy", "--offset", "3"], "--offset 3 is past the 3 samples of {d}/x.npy"),
    (["predict", "--npy", "{d}/text.npy"], "--npy {d}/text.npy is not a .npy file; expected a .npy array"),
    (["predict", "--image", "{d}"], "Is a directory"),
], ids=["figures-engine-report", "figures-folder", "figures-not-json", "demo-report-file", "demo-device-cuda",
        "demo-device-tpu", "demo-selection", "demo-batch-size", "stream-report-file", "stream-buckets",
        "predict-count", "predict-top-k", "predict-negative-offset", "predict-offset", "predict-npy-offset",
        "predict-npy-not-npy", "predict-image-folder"])
def test_ordinary_mistakes_are_one_line_and_exit_2(mistakes, args, words):
    before = sorted(p.relative_to(mistakes) for p in mistakes.rglob("*"))
    # No server listens at the target: each mistake is found before any connection is tried.
    argv = [a.format(d=mistakes) for a in args] + (["--target", f"127.0.0.1:{free_port()}"]
                                                    if args[0] in ("stream", "predict") else [])
    line = one_line_error(["-m", "client", *argv])
    assert line.startswith("error: ") and words.format(d=mistakes) in line, line
    assert sorted(p.relative_to(mistakes) for p in mistakes.rglob("*")) == before  # no figure, no folder


def test_stream_to_a_port_without_a_server_fails_at_once():
    """The reconnect budget (120 s) is for a server that was there: one that never answered fails the command
    within the client's own few retries."""
    port = free_port()
    line = one_line_error(["-m", "client", "stream", "--target", f"127.0.0.1:{port}", "--quiet"], code=1,
                          timeout=100)
    assert line.startswith(f"error: GetStatus: UNAVAILABLE: no server answers at 127.0.0.1:{port}"), line
    assert "check --target" in line


def test_status_into_a_closed_pipe_exits_quietly_as_unix_tools_do(service):
    """`clstream-client status --json | head`: the reader has gone before the output is written."""
    t = target(service(learner()))
    process = subprocess.Popen([sys.executable, "-m", "client", "status", "--json", "--target", t],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # as `head` does once it has its lines; here before anything is written
    err = process.stderr.read()
    assert process.wait(timeout=120) == 141 and err == ""  # 128 + SIGPIPE, and not a word of traceback


def test_an_undecodable_image_is_named_without_python_internals(service, tmp_path):
    t = target(service(learner(), class_names=list("0123456789"), input_shape=[1, 8, 8]))
    (tmp_path / "photo.png").write_bytes(b"GIF89a not a png")
    line = one_line_error(["-m", "client", "predict", "--target", t, "--image", str(tmp_path / "photo.png")], code=1)
    assert "INVALID_ARGUMENT" in line and "not a JPEG or PNG file (it starts with b'GIF89a n')" in line, line
    assert "object at 0x" not in line and "BytesIO" not in line


def test_predict_samples_across_the_classes_of_a_split_sorted_by_label(service, capsys):
    t = target(service(learner(), class_names=list("0123456789"), input_shape=[1, 8, 8]))
    assert main(["predict", "--target", t, "--dataset", "digits-rotated", "--count", "8", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    truth = [p["true_label"] for p in answer["predictions"]]
    assert len(truth) == 8 and len(set(truth)) >= 6, truth  # the first 8 samples are all of class 0
    assert answer["predictions"][0]["sample"] == "bucket 0 test[0]"


def test_the_help_shows_the_defaults():
    def help_of(*argv):
        done = subprocess.run([sys.executable, "-m", *argv, "--help"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return " ".join(done.stdout.split())  # argparse wraps lines

    stream = help_of("client", "stream")
    for words in ("fails the command at once) (default: 120.0)", "samples per training batch (default: 10)",
                  "at most (0: no client-side bound) (default: 16)"):
        assert words in stream, words
    demo = help_of("client", "demo")
    for words in ("SGD learning rate (default: 0.1)", "samples the replay memory can hold at most; default: 1000 for "
                  "reservoir retention, unbounded for ratio and per-bucket retention",
                  "(default: out/demo)", "gRPC port (0: a free one) (default: 0)"):
        assert words in demo, words
    server = help_of("server.main")
    for words in ("gRPC port; 0 picks a free one (default: 50051)", "metrics port; 0 picks a free one (default: 9464)",
                  "SGD learning rate (default: 0.1)", "samples the replay memory can hold at most; default: 1000 for "
                  "reservoir retention, unbounded for ratio and per-bucket retention",
                  "serve Prometheus metrics over HTTP (default: True)"):
        assert words in server, words


def test_forget_stream_command_drops_a_mark_and_says_what_it_did(service, small_stream, capsys):
    s = service(learner(), max_streams=1)
    t = target(s)
    with Client(t) as c:
        schema = Schema(tuple(small_stream.class_names), tuple(small_stream.input_shape))
        assert [a.sequence for a in c.train(train_batches_of(small_stream, "only", 2), schema=schema)] == [1, 2]
    assert main(["forget-stream", "--target", t, "only"]) == 0
    assert "forgot stream 'only' (its applied mark was 2)" in capsys.readouterr().out
    assert main(["forget-stream", "--target", t, "only", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"stream_id": "only", "forgotten": False, "sequence": 0,
                                                   "streams_known": 0}
    with Client(t) as c:
        assert c.status().applied_sequences == {}
    line = one_line_error(["-m", "client", "forget-stream", "--target", t, ""], code=1)
    assert "INVALID_ARGUMENT" in line and "stream_id" in line, line


def train_batches_of(stream, stream_id: str, n: int):
    from client.api import Batch

    train = stream.buckets[0].train
    for k in range(n):
        x, y = train.batch(np.arange(k * 10, k * 10 + 10), train=True)
        yield Batch(stream_id, k + 1, 0, x, y)
