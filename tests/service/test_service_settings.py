"""Settings: flags > CLSTREAM_* environment > config file > defaults, every engine option included."""
from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from cl_engine import LearnerConfig
from server.main import main
from server.settings import ServerSettings, build_parser, load_settings


def test_defaults_are_loopback_and_the_engines():
    s = load_settings([])
    assert s.host == "127.0.0.1" and s.metrics_host == "127.0.0.1" and s.port == 50051
    assert s.learner_config() == LearnerConfig()
    assert s.auth_tokens == [] and s.tls_cert_file is None and s.checkpoint_dir is None


def test_every_engine_option_is_a_setting_and_a_flag():
    flags = {a.dest for a in build_parser()._actions}
    for name in LearnerConfig.model_fields:
        assert name in ServerSettings.model_fields and name in flags, name
    for name in ServerSettings.model_fields:
        assert name in flags, name


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_flags_beat_environment_beat_file_beat_defaults(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"server{suffix}"
    values = {"port": 1111, "lr": 0.5, "strategy": "gem", "queue_size": 7, "momentum": 0.3}
    if suffix == ".toml":
        path.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items()) + "\n")
    else:
        path.write_text(json.dumps(values))
    monkeypatch.setenv("CLSTREAM_PORT", "2222")
    monkeypatch.setenv("CLSTREAM_LR", "0.25")
    monkeypatch.setenv("CLSTREAM_INPUT_SHAPE", "[1, 8, 8]")
    monkeypatch.setenv("CLSTREAM_CLASS_NAMES", '["a", "b", "c"]')
    s = load_settings(["--config", str(path), "--port", "3333", "--memory-per-bucket", "12"])
    assert s.port == 3333  # flag over environment over file
    assert s.lr == 0.25  # environment over file
    assert s.strategy == "gem" and s.queue_size == 7 and s.momentum == 0.3  # file over defaults
    assert s.memory_per_bucket == 12 and s.retention == "per-bucket"  # the engine's own default logic
    assert s.input_shape == [1, 8, 8] and s.class_names == ["a", "b", "c"]
    monkeypatch.setenv("CLSTREAM_CONFIG", str(path))
    assert load_settings([]).queue_size == 7


def test_lists_and_switches_as_flags():
    s = load_settings(["--input-shape", "3", "32", "32", "--class-names", "cat", "dog", "--no-metrics-enabled",
                       "--auth-tokens", "t1", "t2", "--retain-ratio", "0.1", "--image-mean", "0.5", "0.4", "0.3"])
    assert s.input_shape == [3, 32, 32] and s.class_names == ["cat", "dog"] and not s.metrics_enabled
    assert s.tokens() == ["t1", "t2"] and s.retention == "ratio" and s.image_mean == [0.5, 0.4, 0.3]
    assert "t1" not in json.dumps(s.public())


@pytest.mark.parametrize("argv,words", [
    (["--lr", "-1"], "lr"),
    (["--strategy", "magic"], "strategy"),
    (["--port", "70000"], "port"),
    (["--class-names", "a", "b"], "go together"),
    (["--input-shape", "1", "8", "8", "--class-names", "a"], "2..100000"),
    (["--tls-cert-file", "x.pem"], "go together"),
    (["--tls-client-ca-file", "ca.pem"], "mutual TLS"),
    (["--selection", "el2n"], "reservoir"),
    (["--image-std", "0"], "image_std"),
    (["--image-transform", "imagenet", "--image-mean", "0.5"], "imagenet brings its own"),
    (["--image-transform", "imagenet", "--uint8-inputs", "scale"], "needs uint8_inputs imagenet"),
    (["--log-level", "LOUD"], "log_level"),
])
def test_bad_settings_are_refused_by_name(argv, words):
    with pytest.raises((ValidationError, ValueError, SystemExit)) as e:
        load_settings(argv)
    assert e.type is SystemExit or words in str(e.value)


def test_the_imagenet_image_transform_brings_the_clear_streams_learner_views():
    s = load_settings(["--image-transform", "imagenet"])
    assert (s.uint8_inputs, s.augment) == ("imagenet", "crop-flip")
    assert load_settings(["--image-transform", "imagenet", "--augment", "none"]).augment == "none"
    assert load_settings([]).uint8_inputs == "scale"


def test_a_typo_in_the_config_file_is_refused(tmp_path):
    path = tmp_path / "server.toml"
    path.write_text("prot = 1234\n")
    with pytest.raises(ValidationError, match="prot"):
        load_settings(["--config", str(path)])
    with pytest.raises(ValueError, match="does not exist"):
        load_settings(["--config", str(tmp_path / "missing.toml")])
    with pytest.raises(ValueError, match=".toml or .json"):
        load_settings(["--config", str(tmp_path / "server.yaml")])


def test_main_prints_the_effective_config_and_refuses_bad_settings(capsys):
    assert main(["--print-config", "--strategy", "agem", "--auth-tokens", "hush"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["strategy"] == "agem" and printed["retention"] == "per-bucket" and "hush" not in json.dumps(printed)
    assert main(["--lr", "0"]) == 2
    assert "invalid settings" in capsys.readouterr().err
