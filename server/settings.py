"""The server's settings: one pydantic-settings model, read from flags > CLSTREAM_* environment >
config file (TOML or JSON, `--config` or CLSTREAM_CONFIG) > defaults.

The engine's options are cl_engine.LearnerConfig's own fields (inherited, not copied), so every
option of `python -m cl_engine run` is here under the same name: `--strategy gem`,
`CLSTREAM_STRATEGY=gem` or `strategy = "gem"` in the file. Lists in the environment are JSON
(`CLSTREAM_INPUT_SHAPE='[1, 8, 8]'`); on the command line they are space separated.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import typing
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_core import PydanticUndefined
from pydantic_settings import (BaseSettings, JsonConfigSettingsSource, PydanticBaseSettingsSource,
                               SettingsConfigDict, SettingsError, TomlConfigSettingsSource)

from cl_engine.config import LearnerConfig

try:
    from tomllib import TOMLDecodeError
except ImportError:  # Python 3.10: pydantic-settings reads TOML with tomli
    from tomli import TOMLDecodeError

_CONFIG_FILE: ContextVar[Path | None] = ContextVar("clstream_config_file", default=None)
MiB = 1024 * 1024


class ServerSettings(BaseSettings, LearnerConfig):
    model_config = SettingsConfigDict(env_prefix="CLSTREAM_", extra="forbid", validate_default=True)

    # Network.
    host: str = Field("127.0.0.1", description="address the gRPC server binds (loopback by default)")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    metrics_enabled: bool = Field(True, description="serve Prometheus metrics over HTTP")
    metrics_host: str = Field("127.0.0.1", description="address the metrics endpoint binds")
    metrics_port: int = Field(9464, ge=0, le=65535, description="metrics port; 0 picks a free one")
    max_message_bytes: int = Field(64 * MiB, ge=4096, le=2**31 - 1,
                                   description="largest gRPC message accepted or sent (RESOURCE_EXHAUSTED above)")
    worker_threads: int = Field(8, ge=2, description="gRPC handler threads beyond the call budgets' sum, kept for "
                                                     "health checks and for answering refusals")
    # Call budgets (server/budgets.py): calls at once, per kind; beyond them RESOURCE_EXHAUSTED naming the budget.
    max_open_streams: int = Field(16, ge=1, description="Train, RegisterEvalSet, health Watch and reflection "
                                                        "streams open at once, all clients together")
    max_streams_per_client: int = Field(8, ge=1, description="streams one client may hold open: per bearer token "
                                                             "with auth, per peer address without")
    max_admin_calls: int = Field(8, ge=1, description="EndBucket, ForgetStream and other admin calls running at "
                                                      "once")
    stream_idle_timeout_seconds: float = Field(120.0, ge=0, description="a client stream that sends nothing this "
                                               "long, while owed no answer, is ended with ABORTED (0: never)")
    keepalive_seconds: float = Field(60.0, gt=0, description="the server pings a connection silent this long, and "
                                                              "closes it when the ping is not answered in 20 s")
    keepalive_min_ping_seconds: float = Field(10.0, gt=0, description="clients may ping at most this often; faster "
                                                                       "pingers are disconnected (GOAWAY)")
    # Training.
    queue_size: int = Field(64, ge=1, description="training operations waiting for the worker, at most")
    enqueue_timeout_seconds: float = Field(30.0, gt=0, description="how long a sender waits on a full queue "
                                                                   "before RESOURCE_EXHAUSTED")
    snapshot_interval_seconds: float = Field(0.0, ge=0, description="least time between two serving snapshots "
                                                                    "while batches keep coming (0: after every batch)")
    learner_process: bool = Field(False, description="train in a process of its own, so that training never holds "
                                                     "the GIL the gRPC threads need (Predict, decoding, acks)")
    learner_nice: int = Field(10, ge=0, le=19, description="with learner_process: added to the learner process's "
                                                       "niceness, so that when cores are short Predict goes first")
    max_streams: int = Field(1024, ge=1, description="distinct training stream ids whose applied marks are kept, "
                                                      "at most")
    stream_mark_max_idle_seconds: float = Field(7 * 24 * 3600.0, ge=0, description="a stream's applied mark unused "
                                                "this long is dropped, least recently used first, when a new stream "
                                                "needs its place (0: never; ForgetStream drops one at once)")
    max_buckets: int = Field(100, ge=1, description="buckets (trained or held-out) the server accepts, at most; "
                                                  "bounds the accuracy matrix metric to max_buckets² series")
    # Schema: both or neither; neither lets the first client declare it.
    class_names: list[str] | None = Field(None, description="class names in label order")
    input_shape: list[int] | None = Field(None, description="shape of one sample, e.g. 1 8 8")
    # Bounds on a schema a first client declares (server/schema_bounds.py), checked before anything is allocated.
    max_sample_values: int = Field(3 * 512 * 512, ge=1, le=3 * 1024 * 1024,
                                   description="values in one sample (the product of input_shape), at most")
    max_classes: int = Field(1000, ge=2, le=100_000, description="classes of a schema, at most (each is a label of "
                                                                 "the per-class metrics)")
    max_model_bytes: int = Field(256 * MiB, ge=MiB, description="the model's float32 parameters for a schema, in "
                                 "bytes, at most (training holds about 4x: gradients, momentum, the serving copy)")
    # Input limits and image preprocessing.
    max_batch_samples: int = Field(4096, ge=1, description="samples per message, at most")
    max_eval_samples: int = Field(100_000, ge=1, description="samples per registered held-out set, at most")
    max_eval_total_samples: int = Field(1_000_000, ge=1, description="samples across every registered held-out "
                                        "set, at most (they are in every checkpoint too)")
    max_eval_total_bytes: int = Field(1024 * MiB, ge=1, description="bytes the held-out sets take across every "
                                      "registered set, at most (uint8 samples are kept as uint8: 1 byte a value)")
    max_image_bytes: int = Field(16 * MiB, ge=1, description="bytes per encoded image, at most")
    max_image_pixels: int = Field(4096 * 4096, ge=1, description="declared width × height per image, at most "
                                                                 "(checked before decoding)")
    max_message_pixels: int = Field(64 * MiB, ge=1, description="declared pixels of all the images of one message "
                                    "together, at most (checked before decoding; ~0.3 s of one core)")
    image_mean: list[float] | None = Field(None, description="per-channel mean subtracted from decoded images")
    image_std: list[float] | None = Field(None, description="per-channel std dividing decoded images")
    image_transform: Literal["resize-crop", "imagenet"] = Field(
        "resize-crop", description="resize-crop: shorter side resized, centre cropped, then image_mean/std; "
                                   "imagenet: cl_engine's image-dataset transforms (CLEAR's): Train images reach the "
                                   "learner as uint8 pixels (shorter side resized, centre cropped) that it "
                                   "normalises and augments afresh at every use (uint8_inputs imagenet and augment "
                                   "crop-flip unless set), other images are normalised at decode")
    max_concurrent_predictions: int = Field(32, ge=1, description="Predict, Evaluate and GetStatus calls at once "
                                                                  "(a call budget); more are shed with "
                                                                  "RESOURCE_EXHAUSTED")
    decode_threads: int = Field(default_factory=lambda: min(8, os.cpu_count() or 1), ge=1, le=256,
                                description="threads that decode one message's encoded images in parallel (1: in "
                                            "order): Predict, Evaluate and RegisterEvalSet images on receipt, a "
                                            "Train batch's where it is applied (the learner's thread or process); "
                                            "only for large images, 16 KiB or more each on average (default: the "
                                            "CPU count, at most 8)")
    # Checkpoints.
    checkpoint_dir: Path | None = Field(None, description="where checkpoints go; none: no checkpoints")
    checkpoint_every_batches: int = Field(500, ge=0, description="checkpoint after this many batches (0: only at "
                                                                 "bucket ends and shutdown)")
    checkpoint_every_seconds: float = Field(0.0, ge=0, description="checkpoint when this long has passed since "
                                                                   "the last one (0: off)")
    checkpoint_keep: int = Field(3, ge=1, description="newest checkpoints kept on disk")
    start_empty_on_corrupt: bool = Field(False, description="when every checkpoint in checkpoint_dir is corrupt, "
                                         "start with an empty model (the corrupt files are kept as *.corrupt) "
                                         "instead of refusing to start (exit 2)")
    # Guarded promotion (server/promotion.py).
    guarded_promotion: bool = Field(False, description="a new model version reaches serving only after its accuracy "
                                    "on the registered held-out sets is not lower than the serving version's by "
                                    "more than promotion_tolerance")
    promotion_every_batches: int = Field(50, ge=1, description="with guarded_promotion: training batches between "
                                         "two canary checks (each bucket end is one too)")
    promotion_tolerance: float = Field(0.02, ge=0, le=1, description="with guarded_promotion: canary accuracy a new "
                                       "version may lose against the serving one (0.02: two points)")
    rollback_keep: int = Field(3, ge=0, description="model versions kept for Rollback (each served at a bucket end, "
                               "or promoted under guarded_promotion): a copy of the learner's state each, in memory "
                               "and in every checkpoint; 0: none")
    # Drift detection (Page-Hinkley on the prequential error, see cl_engine/drift.py).
    drift_delta: float = Field(0.01, ge=0, description="change in error rate tolerated")
    drift_threshold: float = Field(100.0, gt=0, description="alarm threshold, in samples × error")
    drift_min_samples: int = Field(30, ge=1, description="samples before the first alarm")
    drift_alpha: float = Field(1.0, gt=0, le=1, description="fading factor of the cumulative sum")
    # Security.
    tls_cert_file: Path | None = Field(None, description="PEM certificate chain: serve TLS")
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file")
    tls_client_ca_file: Path | None = Field(None, description="PEM CA bundle: require client certificates "
                                                              "(mutual TLS)")
    auth_tokens: list[SecretStr] = Field(default_factory=list, description="bearer tokens accepted, trimmed; "
                                         "none: no auth; empty ones are refused; prefer the env or a file")
    auth_token_file: Path | None = Field(None, description="file of accepted bearer tokens, one per line, trimmed; "
                                                           "blank lines are skipped, a file of none is refused")
    # Prediction replica (server/replica.py): follow a learner instead of training.
    follow: str | None = Field(None, description="run as a Predict-only replica of the learner at this gRPC target "
                               "(HOST:PORT): serve the versions it publishes, train nothing")
    follow_token: SecretStr | None = Field(None, description="bearer token the replica presents to the learner; "
                                           "prefer the env (CLSTREAM_FOLLOW_TOKEN) or the config file")
    follow_tls: bool = Field(False, description="connect to the learner with TLS (the system's CA roots unless "
                                                "follow_ca_file)")
    follow_ca_file: Path | None = Field(None, description="PEM CA bundle to verify the learner (implies follow_tls)")
    follow_cert_file: Path | None = Field(None, description="PEM client certificate for a learner that requires "
                                                            "mutual TLS (with follow_key_file)")
    follow_key_file: Path | None = Field(None, description="PEM private key of follow_cert_file")
    # Lifecycle.
    shutdown_grace_seconds: float = Field(10.0, ge=0, description="time in-flight calls get on SIGTERM")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")

    @model_validator(mode="before")
    @classmethod
    def _ratio_implies_ratio_retention(cls, data: Any) -> Any:
        """As in `python -m cl_engine run`: a retain ratio without a retention means ratio retention."""
        if isinstance(data, dict) and data.get("retain_ratio") is not None and data.get("retention") is None:
            data = {**data, "retention": "ratio"}
        return data

    @model_validator(mode="before")
    @classmethod
    def _imagenet_images_are_viewed_as_clear_does(cls, data: Any) -> Any:
        """image_transform=imagenet hands the learner Train images as uint8 pixels for it to normalise and
        augment (as cl_engine's CLEAR stream does): unset, uint8_inputs and augment default to that stream's
        (imagenet, crop-flip); uint8_inputs=scale would train on pixels that serving normalises."""
        if not isinstance(data, dict) or data.get("image_transform") != "imagenet":
            return data
        if data.get("uint8_inputs") not in (None, "imagenet"):
            raise ValueError(f"image_transform imagenet needs uint8_inputs imagenet (Train images reach the learner "
                             f"as uint8 pixels that it normalises), got {data['uint8_inputs']!r}; drop uint8_inputs")
        return {"uint8_inputs": "imagenet", **data, **({} if data.get("augment") else {"augment": "crop-flip"})}

    @field_validator("auth_tokens", mode="after")
    @classmethod
    def _usable_tokens(cls, tokens: list[SecretStr]) -> list[SecretStr]:
        """Auth fails closed: a token is trimmed (spaces around it could never be sent), an empty one is an
        error, never a token that `authorization: Bearer` matches."""
        trimmed = [SecretStr(t.get_secret_value().strip()) for t in tokens]
        for i, token in enumerate(trimmed):
            if not token.get_secret_value():
                raise ValueError(f"token {i + 1} of {len(trimmed)} is empty: it would let `authorization: Bearer` "
                                 "with no token in; remove it from --auth-tokens, CLSTREAM_AUTH_TOKENS or the config "
                                 "file's auth_tokens")
        return trimmed

    @model_validator(mode="after")
    def _check_server(self) -> "ServerSettings":
        self._check_token_sources()
        if (self.class_names is None) != (self.input_shape is None):
            raise ValueError("class_names and input_shape go together: give both to fix the schema, or neither "
                             "to let the first client declare it")
        if self.class_names is not None:
            from .schema import Schema
            from .errors import ServiceError
            from .schema_bounds import SchemaBounds
            try:
                SchemaBounds(self.model, self.max_sample_values, self.max_classes, self.max_model_bytes).check(
                    Schema.validated(self.class_names, self.input_shape, "settings"), "settings")
            except ServiceError as e:
                raise ValueError(e.message) from None
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        for name in ("image_mean", "image_std"):
            values = getattr(self, name)
            if values is not None and len(values) not in (1, 3):
                raise ValueError(f"{name} takes 1 or 3 values (per channel), got {len(values)}")
        if self.image_transform == "imagenet" and (self.image_mean is not None or self.image_std is not None):
            raise ValueError("image_mean and image_std apply to the resize-crop transform; imagenet brings its own")
        if self.image_std is not None and any(v <= 0 for v in self.image_std):
            raise ValueError("image_std values must be > 0")
        self._check_follow()
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"log_level must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")
        return self

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource):
        path = _CONFIG_FILE.get()
        if path is None:
            return init_settings, env_settings
        if path.suffix == ".toml":
            return init_settings, env_settings, TomlConfigSettingsSource(settings_cls, path)
        return init_settings, env_settings, JsonConfigSettingsSource(settings_cls, path)

    def _check_follow(self) -> None:
        if (self.follow_cert_file is None) != (self.follow_key_file is None):
            raise ValueError("follow_cert_file and follow_key_file go together (mutual TLS to the learner)")
        if self.follow_ca_file is not None or self.follow_cert_file is not None:
            self.follow_tls = True
        if self.follow is None:
            if self.follow_token is not None or self.follow_tls:
                raise ValueError("follow_token and follow_tls/ca/cert/key are for a replica: give --follow "
                                 "HOST:PORT too")
            return
        if not self.follow.strip():
            raise ValueError("follow is empty; expected the learner's gRPC target, e.g. 127.0.0.1:50051")
        if self.checkpoint_dir is not None or self.learner_process:
            raise ValueError("a replica (--follow) trains nothing: checkpoint_dir and learner_process are for the "
                             "learner; drop them")

    def _check_token_sources(self) -> None:
        """A token source that yields no token refuses to start rather than leave the server open."""
        if "auth_tokens" in self.model_fields_set and not self.auth_tokens and self.auth_token_file is None:
            raise ValueError("auth_tokens is set but holds no token, which would turn auth off; give at least one "
                             "token in --auth-tokens, CLSTREAM_AUTH_TOKENS or the config file, or unset it to run "
                             "without auth")
        if self.auth_token_file is not None:
            try:
                text = self.auth_token_file.read_text()
            except (OSError, UnicodeDecodeError) as e:
                raise ValueError(f"auth_token_file {self.auth_token_file}: cannot read it ({e})") from None
            if not any(line.strip() for line in text.splitlines()):
                raise ValueError(f"auth_token_file {self.auth_token_file} holds no token (it is empty or blank), "
                                 "which would turn auth off; put one token per line in it, or drop --auth-token-file "
                                 "/ CLSTREAM_AUTH_TOKEN_FILE to run without auth")

    # -- derived ------------------------------------------------------------------------------------

    def learner_config(self) -> LearnerConfig:
        return LearnerConfig(**self.model_dump(include=set(LearnerConfig.model_fields)))

    def tokens(self) -> list[str]:
        tokens = [t.get_secret_value() for t in self.auth_tokens]
        if self.auth_token_file is not None:
            tokens += [line.strip() for line in self.auth_token_file.read_text().splitlines() if line.strip()]
        return tokens

    def public(self) -> dict:
        """The effective settings, as JSON-ready values, with secrets masked."""
        return self.model_dump(mode="json")


def load_settings(argv: list[str] | None = None, **overrides: Any) -> ServerSettings:
    """Settings from the command line, the environment and the config file; `overrides` act as flags."""
    args = vars(build_parser().parse_args(argv))
    config = args.pop("config", None) or os.environ.get("CLSTREAM_CONFIG")
    args.pop("print_config", None)
    return settings_from(config, **args, **overrides)


def settings_from(config: str | Path | None = None, **values: Any) -> ServerSettings:
    path = Path(config) if config else None
    if path is not None:
        if path.suffix not in (".toml", ".json"):
            raise ValueError(f"config file {path}: expected a .toml or .json file")
        if not path.is_file():
            raise ValueError(f"config file {path} does not exist")
    token = _CONFIG_FILE.set(path)
    try:
        return ServerSettings(**values)
    except (TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"config file {path} is not valid {path.suffix[1:].upper()}: {e}") from None
    except SettingsError as e:
        raise ValueError(_env_message(str(e))) from None
    finally:
        _CONFIG_FILE.reset(token)


def _env_message(error: str) -> str:
    """pydantic-settings' 'error parsing value for field "x" from source "EnvSettingsSource"' as what to write."""
    field = re.search(r'field "(\w+)"', error)
    if field is None or "EnvSettingsSource" not in error:
        return error
    name = field.group(1)
    return (f"CLSTREAM_{name.upper()} is not valid JSON; a setting of several values takes a JSON list, "
            f"e.g. CLSTREAM_{name.upper()}='[\"a\", \"b\"]' (or the flag --{name.replace('_', '-')} a b)")


def _with_default(text: str, default: Any) -> str:
    """A flag's help with the setting's default, where it has a plain one (argparse's % escaped)."""
    if default is None or default is PydanticUndefined or "default" in text:
        return text
    shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
    return f"{text} (default: {shown})".lstrip().replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    """One flag per setting (unset flags fall through to the environment, the file, the default)."""
    p = argparse.ArgumentParser(prog="clstream-server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter, argument_default=argparse.SUPPRESS)
    p.add_argument("--config", help="TOML or JSON file of settings (also CLSTREAM_CONFIG)")
    p.add_argument("--print-config", action="store_true", help="print the effective settings as JSON and exit")
    for name, field in ServerSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        annotation = field.annotation
        args = typing.get_args(annotation)
        kwargs: dict[str, Any] = {"help": _with_default(field.description or "", field.default)}
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(annotation) is list or any(typing.get_origin(a) is list for a in args):
            kwargs["nargs"] = "*"
        else:
            literals = [v for a in (annotation, *args) if typing.get_origin(a) is typing.Literal for v in typing.get_args(a)]
            if literals:
                kwargs["choices"] = literals
        p.add_argument(flag, dest=name, **kwargs)
    return p


if __name__ == "__main__":  # pragma: no cover - a quick look at the effective settings
    print(load_settings(sys.argv[1:]).model_dump_json(indent=2))
