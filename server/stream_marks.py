"""Which stream ids' applied marks the training worker keeps, and for how long.

Each stream id the server has applied a batch of has a mark (its highest applied sequence), kept in
checkpoints; it is what makes a resent batch a duplicate. The table is bounded by `max_streams`.
A mark idle (no batch of its stream, duplicates included) for longer than
`stream_mark_max_idle_seconds` is dropped, least recently used first, when a new stream needs its
place; an admin drops one at once with ForgetStream. After a restart every restored mark counts as
just used (checkpoints hold no times). A dropped mark ends exactly-once for that id: a batch sent
under it afterwards is applied as new, whatever its sequence.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Callable

from .errors import ResourceExhausted

log = logging.getLogger(__name__)


class StreamMarks:
    def __init__(self, max_streams: int, max_idle_seconds: float = 0.0, clock: Callable[[], float] = time.monotonic):
        self.max_streams = max_streams
        self.max_idle_seconds = max_idle_seconds  # 0: never dropped for idleness
        self._clock = clock
        self._used: OrderedDict[str, float] = OrderedDict()  # stream_id → last use, least recent first

    def restored(self, applied: dict[str, int]) -> None:
        now = self._clock()
        self._used = OrderedDict((s, now) for s in applied)

    def used(self, stream_id: str) -> None:
        self._used[stream_id] = self._clock()
        self._used.move_to_end(stream_id)

    def forget(self, applied: dict[str, int], stream_id: str) -> int | None:
        """Drop one stream's mark; the mark, or None when there was none."""
        self._used.pop(stream_id, None)
        return applied.pop(stream_id, None)

    def admit(self, applied: dict[str, int], stream_id: str) -> None:
        """Make room for a new stream id: drop the marks idle too long, least recently used first, until
        one place is free; RESOURCE_EXHAUSTED naming both ways out when none is."""
        if stream_id in applied or len(applied) < self.max_streams:
            return
        if self.max_idle_seconds > 0:
            cutoff = self._clock() - self.max_idle_seconds
            dropped = []
            for old, when in list(self._used.items()):
                if len(applied) < self.max_streams or when > cutoff:
                    break
                dropped.append((old, self.forget(applied, old)))
            if dropped:
                log.info("dropped the applied marks of %d stream(s) idle for over %.0f s (stream_mark_max_idle_"
                         "seconds), least recently used first: %s", len(dropped), self.max_idle_seconds,
                         ", ".join(f"{s!r} at {q}" for s, q in dropped[:10]))
        if len(applied) >= self.max_streams:
            idle = (f"none has been idle for {self.max_idle_seconds:.0f} s (stream_mark_max_idle_seconds), after "
                    "which the least recently used are dropped" if self.max_idle_seconds > 0
                    else "stream_mark_max_idle_seconds is 0, so none is dropped for idleness")
            raise ResourceExhausted(f"stream_id: the server keeps the applied marks of {len(applied)} streams, its "
                                    f"max_streams, and {idle}; reuse a stream_id, or have an admin drop one with "
                                    "the ForgetStream RPC (`clstream-client forget-stream STREAM_ID`)")
