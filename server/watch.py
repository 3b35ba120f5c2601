"""WatchModel on the learner: its published serving versions, streamed to prediction replicas.

A replica (server/replica.py) gets exactly what the learner serves: the versions published to the
SnapshotHolder, whatever decided to publish them, never the module being trained. Each version is
encoded once (torch.save of the snapshot's state_dict) and shared by every watcher that sends it;
a watcher sends it in chunks of at most CHUNK_BYTES and, when it is done, takes the newest version,
so a replica slower than the learner skips versions instead of queueing them: the learner holds at
most the current encoding plus one per watcher still sending an older one. A send waits for gRPC's
flow control, so a stalled replica holds a thread and nothing more.
"""
from __future__ import annotations

import io
import threading
import uuid
from dataclasses import dataclass
from typing import Iterator

import torch

from clstream_proto import continual_learner_pb2 as pb

from .schema import SchemaHolder
from .snapshot import Snapshot, SnapshotHolder

CHUNK_BYTES = 1024 * 1024  # weights per ModelChunk, at most (less when max_message_bytes is smaller)
POLL_SECONDS = 0.5  # how often a waiting watcher looks whether its call or the server has ended


@dataclass(frozen=True)
class Encoded:
    version: int
    published_at: float
    data: bytes


def encode_state(model: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


class ModelWatch:
    def __init__(self, snapshots: SnapshotHolder, schemas: SchemaHolder, model: str, max_message_bytes: int):
        self.snapshots = snapshots
        self.schemas = schemas
        self.model = model
        self.learner_id = uuid.uuid4().hex  # new at each start: versions compare only within one run
        self.max_message_bytes = max_message_bytes
        self._lock = threading.Lock()
        self._latest: Encoded | None = None
        self._closing = threading.Event()

    def close(self) -> None:
        """End every watch at its next chunk or poll (the server is stopping: replicas reconnect later)."""
        self._closing.set()

    def _encoded(self, snapshot: Snapshot) -> Encoded:
        """The snapshot's encoding, made once per publication (under the lock: watchers share it)."""
        with self._lock:
            latest = self._latest
            if latest is None or (latest.version, latest.published_at) != (snapshot.version, snapshot.published_at):
                latest = self._latest = Encoded(snapshot.version, snapshot.published_at, encode_state(snapshot.model))
            return latest

    def stream(self, request: pb.WatchModelRequest, context) -> Iterator[pb.ModelChunk]:
        have = (request.have_learner_id, request.have_version)
        seen = 0
        while not self._closing.is_set() and context.is_active():
            count = self.snapshots.wait_published(seen, POLL_SECONDS)
            if count == seen:
                continue
            seen = count
            with self.snapshots.reading() as snapshot:  # held while encoding: never refreshed under us
                if snapshot is None or have == (self.learner_id, snapshot.version):
                    continue
                encoded = self._encoded(snapshot)
            yield from self._chunks(encoded)
            if self._closing.is_set():
                return
            have = (self.learner_id, encoded.version)

    def _chunks(self, encoded: Encoded) -> Iterator[pb.ModelChunk]:
        schema = self.schemas.schema
        data, offset, total = encoded.data, 0, len(encoded.data)
        limit = min(CHUNK_BYTES, self.max_message_bytes)
        while offset < total or offset == 0:
            current = self.snapshots.current()
            chunk = pb.ModelChunk(model_version=encoded.version, learner_id=self.learner_id, offset=offset,
                                  total_bytes=total, latest_version=current.version if current else encoded.version,
                                  latest_published_time=current.published_at if current else encoded.published_at)
            if offset == 0:
                chunk.model = self.model
                chunk.published_time = encoded.published_at
                if schema is not None:
                    chunk.schema.CopyFrom(schema.to_proto())
            room = max(1, limit - chunk.ByteSize() - 16)  # 16: the weights field's tag and length
            chunk.weights = data[offset: offset + room]
            offset += len(chunk.weights)
            yield chunk
            if self._closing.is_set() or total == 0:
                return
