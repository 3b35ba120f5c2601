"""The service's error vocabulary: each error carries the gRPC status code DESIGN.md assigns it.

Validation and the training worker raise these; the servicer turns them into a status and a
message for the caller. Anything else is a bug: logged with its traceback, answered INTERNAL.
"""
from __future__ import annotations

import grpc


class ServiceError(Exception):
    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __reduce__(self):  # picklable whatever a subclass's __init__ takes: it crosses to the learner process
        return _rebuild, (type(self), self.message, self.__dict__)


def _rebuild(cls: type[ServiceError], message: str, state: dict) -> ServiceError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class InvalidArgument(ServiceError):
    """Bad input: the message names the field and the value expected."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field


class FailedPrecondition(ServiceError):
    """The request does not fit the server's state (bucket order, schema, no model yet)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class NotDurable(FailedPrecondition):
    """Applied in memory, but the checkpoint that would make it survive a crash could not be written.
    FAILED_PRECONDITION, not UNAVAILABLE: retrying cannot help until someone fixes the volume."""

    def __init__(self, what: str, problem: str):
        super().__init__(f"not durable: {what} is applied in memory but not on disk, so a crash or restart "
                         f"now would lose it; {problem}")


class ResourceExhausted(ServiceError):
    """Overload: a full queue past its wait, too many concurrent requests, too many streams."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    """The server is shutting down."""

    code = grpc.StatusCode.UNAVAILABLE


class Cancelled(ServiceError):
    """The operation was dropped unapplied because its call ended first."""

    code = grpc.StatusCode.CANCELLED
