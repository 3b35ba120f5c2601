"""Atomic, verified checkpoints: write a temp file, fsync, rename, fsync the directory.

Each file is `checkpoint-<n>.ckpt`, n increasing: a magic line, the payload's length and SHA-256,
then the payload (torch.save of plain containers and tensors, loaded back with weights_only=True,
so loading a checkpoint never runs code). On start the newest file that verifies is loaded; one
that does not is reported, renamed `*.corrupt` (kept for a person to look at, never loaded) and
skipped. Leftover temp files of an interrupted write are removed. The newest `keep` are kept:
before a write, the oldest beyond `keep - 1` are removed (never the only one), so that keeping
3 needs room for 3, not 4; a write whose size does not fit the free space is refused before it
starts, with the numbers.
"""
from __future__ import annotations

import hashlib
import io
import logging
import errno
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

MAGIC = b"CLSTREAM-CHECKPOINT-1\n"
HEADER = struct.Struct("<Q32s")  # payload length, SHA-256 of the payload
NAME = re.compile(r"checkpoint-(\d+)\.ckpt")


class CorruptCheckpoint(ValueError):
    pass


@dataclass
class Skipped:
    path: Path
    reason: str


def encode(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    return MAGIC + HEADER.pack(len(payload), hashlib.sha256(payload).digest()) + payload


def decode(blob: bytes) -> dict:
    if not blob.startswith(MAGIC):
        raise CorruptCheckpoint("not a clstream checkpoint (bad magic)")
    start = len(MAGIC) + HEADER.size
    if len(blob) < start:
        raise CorruptCheckpoint("truncated header")
    length, digest = HEADER.unpack_from(blob, len(MAGIC))
    payload = blob[start:]
    if len(payload) != length:
        raise CorruptCheckpoint(f"payload is {len(payload)} bytes; the header says {length} (truncated write?)")
    if hashlib.sha256(payload).digest() != digest:
        raise CorruptCheckpoint("payload does not match its SHA-256")
    try:
        return torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu")
    except Exception as e:  # a payload that verifies but does not unpickle: written by something else
        raise CorruptCheckpoint(f"payload does not load: {type(e).__name__}: {e}") from e


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointStore:
    def __init__(self, directory: Path, keep: int = 3):
        self.directory = Path(directory)
        self.keep = keep
        self.directory.mkdir(parents=True, exist_ok=True)
        self.skipped: list[Skipped] = []
        for tmp in self.directory.glob(".checkpoint-*.tmp"):
            log.warning("removing %s, left over from an interrupted checkpoint write", tmp)
            tmp.unlink(missing_ok=True)

    def _numbered(self) -> list[tuple[int, Path]]:
        found = []
        for path in self.directory.iterdir():
            m = NAME.fullmatch(path.name)
            if m:
                found.append((int(m.group(1)), path))
        return sorted(found)

    def _next_number(self) -> int:
        numbers = [n for n, _ in self._numbered()]
        numbers += [int(m.group(1)) for p in self.directory.glob("checkpoint-*.corrupt")
                    if (m := re.fullmatch(r"checkpoint-(\d+)\.ckpt\.corrupt", p.name))]
        return max(numbers, default=0) + 1

    def save(self, state: dict) -> Path:
        """Write `state` durably as the newest checkpoint and return its path."""
        blob = encode(state)
        path = self.directory / f"checkpoint-{self._next_number():08d}.ckpt"
        tmp = self.directory / f".{path.name}.tmp"
        self._prune(max(1, self.keep - 1))  # room for the new one first, but never the last one
        vfs = os.statvfs(self.directory)
        free = vfs.f_bavail * vfs.f_frsize
        if len(blob) > free:
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: a checkpoint of {len(blob)} bytes does not "
                                        f"fit, {free} bytes are free", str(path))
        try:
            with open(tmp, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(self.directory)
        except OSError:
            tmp.unlink(missing_ok=True)  # a partial write must not hold the space the next try needs
            raise
        self._prune(self.keep)
        return path

    def _prune(self, keep: int) -> None:
        numbered = self._numbered()
        for _, old in numbered[: max(0, len(numbered) - keep)]:
            old.unlink(missing_ok=True)

    def corrupt_files(self) -> list[Path]:
        """Checkpoints set aside as corrupt, now or on an earlier start."""
        return sorted(self.directory.glob("checkpoint-*.ckpt.corrupt"))

    def load_latest(self) -> tuple[dict, Path] | None:
        """The newest checkpoint that verifies, or None; the corrupt ones on the way are set aside."""
        for _, path in reversed(self._numbered()):
            try:
                return decode(path.read_bytes()), path
            except (CorruptCheckpoint, OSError) as e:
                log.error("checkpoint %s is corrupt and is skipped: %s", path, e)
                self.skipped.append(Skipped(path, str(e)))
                try:
                    path.rename(path.with_name(path.name + ".corrupt"))
                except OSError:
                    pass
        return None
