"""What the model maps from and to: class names and the shape of one sample.

Fixed by the server's settings where they give it, otherwise by the first client that declares
one; once established it never changes, and a different declaration is FAILED_PRECONDITION with
both schemas in the message.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch

from clstream_proto import continual_learner_pb2 as pb

from .errors import FailedPrecondition, InvalidArgument

MAX_CLASSES = 100_000
MAX_NAME_CHARS = 256
MAX_DIMS = 4
MAX_SAMPLE_ELEMENTS = 3 * 1024 * 1024  # one sample of at most 3×1024×1024 values
# The value bound of a schema that declares no range (docs/server.md, "Keeping a live model safe"): wide enough for raw 8- and
# 12-bit pixels (0..4095) and standardised features, narrow enough that no product of inputs and
# weights comes near float32's range; a constant 1e8, 1e20 or 3e38 batch is refused.
DEFAULT_VALUE_BOUND = 1e4


@dataclass(frozen=True)
class Schema:
    class_names: tuple[str, ...]
    input_shape: tuple[int, ...]
    value_min: float | None = None  # the declared value range; None: the default bound
    value_max: float | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def declares_range(self) -> bool:
        return self.value_min is not None or self.value_max is not None

    @property
    def value_range(self) -> tuple[float, float]:
        """The closed range every sample value must lie in."""
        low = -DEFAULT_VALUE_BOUND if self.value_min is None else self.value_min
        high = DEFAULT_VALUE_BOUND if self.value_max is None else self.value_max
        return low, high

    def matches(self, other: "Schema") -> bool:
        """Same classes and shape; the value ranges agree where both declare one (a declaration
        without a range takes the established one)."""
        if (self.class_names, self.input_shape) != (other.class_names, other.input_shape):
            return False
        return not (self.declares_range and other.declares_range) or self.value_range == other.value_range

    def check_values(self, x: torch.Tensor, field: str) -> None:
        """INVALID_ARGUMENT naming the first sample with a value outside `value_range`. Compared in x's precision,
        one rounding step wide: a value at a bound computed in float32 (a 0 or 255 pixel after normalisation, a
        float32 sample equal to a bound) is inside, though the bound's float64 value may lie a step within it."""
        low, high = self.value_range
        dtype = x.dtype if x.is_floating_point() else torch.float64
        bounds = torch.nextafter(torch.tensor([low, high], dtype=dtype), torch.tensor([-math.inf, math.inf], dtype=dtype))
        lo, hi = torch.aminmax(x)
        if bounds[0] <= lo and hi <= bounds[1]:
            return
        flat = x.reshape(len(x), -1)
        bad = ((flat < bounds[0]) | (flat > bounds[1])).any(dim=1).nonzero()[0, 0]
        row = flat[bad]
        value = float(row[(row < bounds[0]) | (row > bounds[1])][0])
        origin = "the schema's value range" if self.declares_range else "the default range for a schema that declares none"
        raise InvalidArgument(field, f"sample {int(bad)} holds the value {value:g}; expected values in "
                                     f"[{low:g}, {high:g}] ({origin})")

    def describe(self) -> str:
        names = list(self.class_names)
        shown = names if len(names) <= 12 else names[:10] + ["…"] + names[-1:]
        declared = f", values: [{self.value_range[0]:g}, {self.value_range[1]:g}]" if self.declares_range else ""
        return f"{{input_shape: {list(self.input_shape)}, classes: {len(names)} {shown}{declared}}}"

    def to_proto(self) -> pb.Schema:
        return pb.Schema(class_names=self.class_names, input_shape=self.input_shape, value_min=self.value_min,
                         value_max=self.value_max)

    def to_dict(self) -> dict:
        return {"class_names": list(self.class_names), "input_shape": list(self.input_shape),
                "value_min": self.value_min, "value_max": self.value_max}

    @classmethod
    def from_proto(cls, message: pb.Schema, field: str = "schema") -> "Schema":
        return cls.validated(list(message.class_names), list(message.input_shape), field,
                             message.value_min if message.HasField("value_min") else None,
                             message.value_max if message.HasField("value_max") else None)

    @classmethod
    def from_dict(cls, d: dict, field: str = "checkpoint") -> "Schema":
        return cls.validated(d["class_names"], d["input_shape"], field, d.get("value_min"), d.get("value_max"))

    @classmethod
    def validated(cls, class_names: list[str], input_shape: list[int], field: str = "schema",
                  value_min: float | None = None, value_max: float | None = None) -> "Schema":
        for name, v in (("value_min", value_min), ("value_max", value_max)):
            if v is not None and not math.isfinite(v):
                raise InvalidArgument(f"{field}.{name}", f"got {v}; expected a finite number")
        low, high = (-DEFAULT_VALUE_BOUND if value_min is None else value_min,
                     DEFAULT_VALUE_BOUND if value_max is None else value_max)
        if (value_min is not None or value_max is not None) and not low < high:
            raise InvalidArgument(f"{field}.value_min", f"got the range [{low:g}, {high:g}]; expected value_min < "
                                                        "value_max")
        if not 2 <= len(class_names) <= MAX_CLASSES:
            raise InvalidArgument(f"{field}.class_names", f"got {len(class_names)} names; expected 2..{MAX_CLASSES}")
        if len(set(class_names)) != len(class_names):
            raise InvalidArgument(f"{field}.class_names", "names repeat; expected distinct names")
        if any(not 1 <= len(n) <= MAX_NAME_CHARS for n in class_names):
            raise InvalidArgument(f"{field}.class_names", f"expected names of 1..{MAX_NAME_CHARS} characters")
        if not 1 <= len(input_shape) <= MAX_DIMS or any(d < 1 for d in input_shape):
            raise InvalidArgument(f"{field}.input_shape", f"got {list(input_shape)}; expected 1..{MAX_DIMS} "
                                                          "dimensions, each >= 1")
        elements = 1
        for d in input_shape:
            elements *= d
        if elements > MAX_SAMPLE_ELEMENTS:
            raise InvalidArgument(f"{field}.input_shape", f"got {list(input_shape)} = {elements} values per sample; "
                                                          f"expected at most {MAX_SAMPLE_ELEMENTS}")
        return cls(tuple(class_names), tuple(int(d) for d in input_shape),
                   None if value_min is None else float(value_min), None if value_max is None else float(value_max))


class SchemaHolder:
    """The established schema, set at most once (thread-safe).

    `check` answers which schema a request is to be validated against without changing anything;
    `establish` sets it once the request has passed, so a rejected request leaves no trace.
    """

    def __init__(self, schema: Schema | None = None):
        self._schema = schema
        self._lock = threading.Lock()

    @property
    def schema(self) -> Schema | None:
        return self._schema

    def check(self, declared: Schema | None) -> Schema:
        established = self._schema
        if established is None:
            if declared is None:
                raise FailedPrecondition("the server has no schema yet: declare one (schema.class_names and "
                                         "schema.input_shape) with the first TrainBatch or EvalSetChunk")
            return declared
        if declared is not None and not declared.matches(established):
            raise FailedPrecondition(f"schema mismatch: the request declares {declared.describe()}, the "
                                     f"server's model has {established.describe()}")
        return established

    def establish(self, schema: Schema) -> bool:
        """Make `schema` the server's; True when it was new. Raises if another one won a race."""
        with self._lock:
            if self._schema is None:
                self._schema = schema
                return True
        self.check(schema)
        return False
