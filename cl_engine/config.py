"""The learner's configuration: one validated model that the CLI, the server and checkpoints share."""
from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .models import MODELS
from torch.cuda import is_available as cuda_available
from .selection import SELECTIONS


RESERVOIR_CAPACITY = 1000  # a reservoir's capacity when none is given: it has no share to follow


class LearnerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field("mlp", description=f"network: one of {', '.join(MODELS)}")
    strategy: Literal["naive", "replay", "gem", "agem"] = Field(
        "replay", description="naive: plain SGD; replay: experience replay; gem, agem: gradient constraints")
    lr: float = Field(0.1, gt=0, le=3e38, description="SGD learning rate")  # float32 must hold it (SGD scales by it)
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="constant, or cosine: annealed from lr to 0 over each bucket's batches (all its "
                                "epochs), restarting at every bucket, as the course study on CLEAR-10 did")
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(0.0, ge=0, description="SGD weight decay (L2)")
    # Replay memory. Capacity is a hard bound on samples held, whatever the retention.
    buffer_capacity: int | None = Field(
        None, ge=0, description="samples the replay memory can hold at most; default: 1000 for reservoir "
                                "retention, unbounded for ratio and per-bucket retention (the memory grows to "
                                "hold exactly the asked share or count of every bucket)")
    retention: Literal["reservoir", "reservoir-end", "ratio", "per-bucket"] | None = Field(
        None, description="reservoir (online, fixed capacity), reservoir-end (the same reservoir, its writes "
                          "applied at the end of each bucket: a bucket replays finished buckets only), ratio (a "
                          "share of each bucket, chosen at its end), per-bucket (a fixed count of each bucket); "
                          "default: reservoir-end for replay (it measures best, and matches Avalanche's Replay: "
                          "docs/engine.md), reservoir with class_balanced, per-bucket for GEM and A-GEM")
    retain_ratio: float = Field(0.05, gt=0, le=1, description="share of each bucket retained (ratio retention)")
    selection: Literal[SELECTIONS] = Field("random", description="which samples a bucket leaves behind")
    class_balanced: bool = Field(False, description="reservoir retention evicts from the largest class")
    candidate_pool: int = Field(2000, ge=1, description="candidates kept per bucket for end-of-bucket selection")
    replay_batch_size: int | None = Field(None, ge=1, description="memory samples per step; default the bucket's batch "
                                          "size (its largest batch so far: a last, partial batch replays a full one)")
    # GEM and A-GEM.
    memory_per_bucket: int = Field(256, ge=1, description="episodic memories per bucket")
    memory_strength: float = Field(0.5, ge=0, description="GEM's margin γ in the dual QP")
    qp_eps: float = Field(1e-3, gt=0, description="GEM: ε added to the Gram matrix's diagonal")
    agem_sample_size: int = Field(256, ge=1, description="A-GEM: memories drawn for the reference gradient")
    gradient_outlier_ratio: float = Field(10.0, ge=0, description="update-size guard: a step whose gradient norm "
                                          "is more than this many times the running typical norm is not applied "
                                          "(gradient_outlier); 0 = off")
    max_update_ratio: float = Field(10.0, ge=0, description="update-size guard: a step whose update could be more "
                                    "than this many times the weights' norm (at least 1) is not applied "
                                    "(update_too_large: a learning rate that makes the loss explode); 0 = off")
    clip_grad_norm: float = Field(0.0, ge=0, description="scale each step's gradient to this global L2 norm at "
                                  "most; 0 = off (it changes results on the normal streams: BENCHMARKS.md)")
    augment: Literal["none", "crop-flip"] = Field(
        "none", description="training augmentation the learner applies to every sample each time it trains on it, "
                            "new or replayed: none, or crop-flip (random resized crop 8-100% and horizontal flip, "
                            "torchvision's, batched on the learner's device); the memory keeps samples as they "
                            "arrived")
    uint8_inputs: Literal["scale", "imagenet"] = Field(
        "scale", description="how uint8 samples (kept as uint8 in the memory) become model inputs: scale to [0, 1], "
                             "or scale and normalise by ImageNet's mean and std")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="arithmetic of every forward pass (training, evaluation, scoring, GEM/A-GEM memory "
                            "gradients, Predict): fp32, bf16 (autocast to bfloat16 on the learner's device; weights, "
                            "gradients and projections stay float32) or fp16 (float16 autocast with a dynamic loss "
                            "scale, CUDA only)")
    channels_last: bool = Field(False, description="conv models: weights and image inputs in channels_last (NHWC) "
                                                   "memory layout, the faster one for oneDNN and cuDNN convolutions")
    prequential_window: int = Field(1000, ge=1, description="samples in the prequential accuracy window")
    seed: int = Field(0, description="seed of the model's initialisation, the batch order and the memory's draws")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")

    @model_validator(mode="after")
    def _check(self) -> "LearnerConfig":
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.precision == "fp16" and (self.device == "cpu" or (self.device == "auto" and not cuda_available())):
            raise ValueError("precision fp16 needs a CUDA device (float16 training with a loss scale), and this "
                             "learner's device is the CPU: use precision bf16 or fp32")
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if self.retention is None:
            if self.strategy in ("gem", "agem"):
                self.retention = "per-bucket"
            else:  # a class-balanced reservoir evicts by the memory's classes as they stand: online only
                self.retention = "reservoir" if self.class_balanced or self.strategy == "naive" else "reservoir-end"
        if self.buffer_capacity is None and self.retention in ("reservoir", "reservoir-end"):
            self.buffer_capacity = RESERVOIR_CAPACITY
        if self.retention in ("reservoir", "reservoir-end") and self.selection != "random":
            raise ValueError(f"selection {self.selection!r} needs ratio or per-bucket retention: add --retain-ratio "
                             "R (e.g. 0.05) or --retention per-bucket; reservoir retention is uniform random by "
                             "definition")
        if self.retention == "reservoir-end" and self.class_balanced:
            raise ValueError("class_balanced evicts by the classes the memory holds now, so it needs the online "
                             "'reservoir' retention, not 'reservoir-end'")
        return self


def validation_message(error: ValidationError) -> str:
    """A pydantic error as one line per field: the field and what is wrong with it, without the input echoed back
    or the documentation URL."""
    parts = []
    for e in error.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in e["loc"])
        message = e["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "\n".join(parts)
