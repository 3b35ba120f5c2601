"""What the model maps from and to: class names and the shape of one sample.

Fixed by the server's settings where they give it, otherwise by the first client that declares
one; once established it never changes, and a different declaration is FAILED_PRECONDITION with
both schemas in the message.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

from clstream_proto import continual_learner_pb2 as pb

from .errors import FailedPrecondition, InvalidArgument

MAX_CLASSES = 100_000
MAX_NAME_CHARS = 256
MAX_DIMS = 4
MAX_SAMPLE_ELEMENTS = 3 * 1024 * 1024  # one sample of at most 3×1024×1024 values


@dataclass(frozen=True)
class Schema:
    class_names: tuple[str, ...]
    input_shape: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> str:
        names = list(self.class_names)
        shown = names if len(names) <= 12 else names[:10] + ["…"] + names[-1:]
        return f"{{input_shape: {list(self.input_shape)}, classes: {len(names)} {shown}}}"

    def to_proto(self) -> pb.Schema:
        return pb.Schema(class_names=self.class_names, input_shape=self.input_shape)

    @classmethod
    def from_proto(cls, message: pb.Schema, field: str = "schema") -> "Schema":
        return cls.validated(list(message.class_names), list(message.input_shape), field)

    @classmethod
    def validated(cls, class_names: list[str], input_shape: list[int], field: str = "schema") -> "Schema":
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
        return cls(tuple(class_names), tuple(int(d) for d in input_shape))


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
        if declared is not None and declared != established:
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
