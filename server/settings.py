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
import sys
import typing
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_core import PydanticUndefined
from pydantic_settings import (BaseSettings, JsonConfigSettingsSource, PydanticBaseSettingsSource,
                               SettingsConfigDict, TomlConfigSettingsSource)

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
    worker_threads: int = Field(16, ge=4, description="gRPC handler threads, and so concurrent calls (each open "
                                                      "stream holds one; calls beyond are RESOURCE_EXHAUSTED)")
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
    max_streams: int = Field(1024, ge=1, description="distinct training stream ids remembered, at most")
    max_buckets: int = Field(100, ge=1, description="buckets (trained or held-out) the server accepts, at most; "
                                                  "bounds the accuracy matrix metric to max_buckets² series")
    # Schema: both or neither; neither lets the first client declare it.
    class_names: list[str] | None = Field(None, description="class names in label order")
    input_shape: list[int] | None = Field(None, description="shape of one sample, e.g. 1 8 8")
    # Input limits and image preprocessing.
    max_batch_samples: int = Field(4096, ge=1, description="samples per message, at most")
    max_eval_samples: int = Field(100_000, ge=1, description="samples per registered held-out set, at most")
    max_image_bytes: int = Field(16 * MiB, ge=1, description="bytes per encoded image, at most")
    max_image_pixels: int = Field(4096 * 4096, ge=1, description="declared width × height per image, at most "
                                                                 "(checked before decoding)")
    image_mean: list[float] | None = Field(None, description="per-channel mean subtracted from decoded images")
    image_std: list[float] | None = Field(None, description="per-channel std dividing decoded images")
    image_transform: Literal["resize-crop", "imagenet"] = Field(
        "resize-crop", description="resize-crop: shorter side resized, centre cropped, then image_mean/std; "
                                   "imagenet: cl_engine's image-dataset transforms (CLEAR's), the training one "
                                   "(random resized crop, flip) for Train batches")
    max_concurrent_predictions: int = Field(32, ge=1, description="Predict and Evaluate calls at once; more are "
                                                                  "shed with RESOURCE_EXHAUSTED")
    decode_threads: int = Field(default_factory=lambda: min(8, os.cpu_count() or 1), ge=1, le=256,
                                description="threads that decode one message's encoded images in parallel (1: in "
                                            "order, in the receiving thread); only for large images, 16 KiB or "
                                            "more each on average (default: the CPU count, at most 8)")
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
    auth_tokens: list[SecretStr] = Field(default_factory=list, description="bearer tokens accepted (none: no "
                                                                           "auth); prefer the env or a file")
    auth_token_file: Path | None = Field(None, description="file of accepted bearer tokens, one per line")
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

    @model_validator(mode="after")
    def _check_server(self) -> "ServerSettings":
        if (self.class_names is None) != (self.input_shape is None):
            raise ValueError("class_names and input_shape go together: give both to fix the schema, or neither "
                             "to let the first client declare it")
        if self.class_names is not None:
            from .errors import InvalidArgument
            from .schema import Schema
            try:
                Schema.validated(self.class_names, self.input_shape, "settings")
            except InvalidArgument as e:
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
    finally:
        _CONFIG_FILE.reset(token)


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
