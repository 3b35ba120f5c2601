"""Idle streams end: a client stream that sends nothing for `stream_idle_timeout_seconds` while the
server owes it nothing is ended with ABORTED naming the setting, so that it gives its place in the
stream budget back (a replay client resumes on ABORTED, from the server's marks).

The clock runs only while the server waits for the client: from the later of the last message
received and the last answer sent, and not while the server still owes the call an answer (a Train
ack of a batch still being trained).
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Iterator

import grpc

from .errors import Cancelled, ServiceError

SETTING = "stream_idle_timeout_seconds"
_END = object()


class StreamIdle(ServiceError):
    code = grpc.StatusCode.ABORTED

    def __init__(self, seconds: float):
        super().__init__(f"the stream sent nothing for {seconds:g} s ({SETTING}), so the server ended it; "
                         "open a new call to send more")


class IdleClock:
    """When the call last did something, and how many answers the server still owes it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._last = time.monotonic()
        self._owed = 0

    def touch(self) -> None:
        with self._lock:
            self._last = time.monotonic()

    def owe(self, n: int = 1) -> None:
        with self._lock:
            self._owed += n
            self._last = time.monotonic()

    def idle_seconds(self) -> float:
        with self._lock:
            return 0.0 if self._owed > 0 else time.monotonic() - self._last


def idle_limited(requests, seconds: float, context, clock: IdleClock | None = None) -> Iterator:
    """`requests`, read ahead by one message in a thread of its own; raises StreamIdle once the client
    has been silent for `seconds` by `clock` (0: never), Cancelled when the client cancels the call
    (no traceback in the log for it). Ends when the call ends."""
    if seconds <= 0:
        try:
            yield from requests
        except grpc.RpcError:
            raise Cancelled("the client ended the stream") from None
        return
    clock = clock or IdleClock()
    box: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def pump() -> None:
        item = _END
        try:
            for item in requests:
                while not stop.is_set():
                    try:
                        box.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        pass
                if stop.is_set():
                    return
            item = _END
        except Exception as e:  # the call ended under us (grpc.RpcError) or the iterator failed
            item = e
        while not stop.is_set():
            try:
                box.put(item, timeout=0.2)
                return
            except queue.Full:
                pass

    threading.Thread(target=pump, name="clstream-stream-reader", daemon=True).start()
    clock.touch()
    try:
        while True:
            try:
                item = box.get(timeout=min(0.25, seconds / 4))
            except queue.Empty:
                if clock.idle_seconds() >= seconds:
                    raise StreamIdle(seconds) from None
                if not context.is_active():
                    return
                continue
            clock.touch()
            if item is _END:
                return
            if isinstance(item, grpc.RpcError):
                raise Cancelled("the client ended the stream") from None
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()

