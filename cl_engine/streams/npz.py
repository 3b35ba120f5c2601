"""`buckets-npz:PATH`: a user's own stream in one .npz file.

Layout: arrays `train_x_<t>`, `train_y_<t>`, `test_x_<t>`, `test_y_<t>` for t = 0..n-1.
Images are N×H×W (one channel) or N×C×H×W, vectors N×D; uint8 is scaled to [0, 1], floats are
kept as they are. Labels are integers 0..K-1; K is the largest label seen plus one.
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from .base import Bucket, Stream, TensorSet

LAYOUT = "arrays train_x_<t>, train_y_<t>, test_x_<t>, test_y_<t> for t = 0..n-1"


def load_npz(path: Path, expected: str):
    """np.load of an .npz archive, or a ValueError that names the file and what was expected (numpy's own
    message for a file that is not a zip talks of pickled data)."""
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # an .npz is a zip archive of .npy arrays
            raise ValueError(f"{path} is not an .npz archive (a zip of .npy arrays); expected {expected}")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} is not a readable .npz archive ({e}); expected {expected}") from None


def _samples(arrays, key: str, path: Path) -> tuple[torch.Tensor, bool]:
    """The samples as float32 (uint8 scaled to [0, 1]) and whether they were uint8."""
    a = arrays[key]
    if a.ndim not in (2, 3, 4):
        raise ValueError(f"{path}: {key} has shape {a.shape}; expected N×D, N×H×W or N×C×H×W")
    if a.dtype == np.uint8:
        x = torch.from_numpy(a.astype(np.float32) / 255.0)
    elif np.issubdtype(a.dtype, np.floating):
        x = torch.from_numpy(a.astype(np.float32))
    else:
        raise ValueError(f"{path}: {key} has dtype {a.dtype}; expected uint8 or a float type")
    if not torch.isfinite(x).all():
        raise ValueError(f"{path}: {key} contains NaN or Inf")
    return (x.unsqueeze(1) if x.ndim == 3 else x), a.dtype == np.uint8


def _labels(arrays, key: str, n: int, path: Path) -> torch.Tensor:
    a = arrays[key]
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{path}: {key} must be a 1-D integer array, got shape {a.shape} dtype {a.dtype}")
    if len(a) != n:
        raise ValueError(f"{path}: {key} has {len(a)} labels for {n} samples")
    if len(a) and a.min() < 0:
        raise ValueError(f"{path}: {key} has negative label {a.min()}; expected 0..K-1")
    return torch.from_numpy(a.astype(np.int64))


def buckets_npz(path: str | Path) -> Stream:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"buckets-npz: no file at {path}; expected one .npz with {LAYOUT}")
    with load_npz(path, f"one .npz with {LAYOUT}") as arrays:
        ids = sorted(int(m.group(1)) for k in arrays.files if (m := re.fullmatch(r"train_x_(\d+)", k)))
        if not ids:
            raise ValueError(f"{path}: no train_x_<t> arrays; expected {LAYOUT} (found {sorted(arrays.files)})")
        if ids != list(range(len(ids))):
            raise ValueError(f"{path}: buckets {ids} are not numbered 0..{len(ids) - 1}")
        buckets, shape = [], None
        uint8 = True  # every sample array: then the values lie in [0, 1], which the stream declares
        for t in ids:
            missing = [k for k in (f"train_x_{t}", f"train_y_{t}", f"test_x_{t}", f"test_y_{t}") if k not in arrays.files]
            if missing:
                raise ValueError(f"{path}: bucket {t} lacks {', '.join(missing)}; expected {LAYOUT}")
            split = {}
            for part in ("train", "test"):
                x, was_uint8 = _samples(arrays, f"{part}_x_{t}", path)
                uint8 = uint8 and was_uint8
                y = _labels(arrays, f"{part}_y_{t}", x.shape[0], path)
                if len(y) == 0:
                    raise ValueError(f"{path}: bucket {t}'s {part}_x_{t} has no samples; expected at least one "
                                     f"(every bucket is trained on and tested)")
                if shape is None:
                    shape = tuple(x.shape[1:])
                elif tuple(x.shape[1:]) != shape:
                    raise ValueError(f"{path}: {part}_x_{t} has samples of shape {tuple(x.shape[1:])}, "
                                     f"bucket 0 has {shape}; every bucket must share one shape")
                split[part] = TensorSet(x, y)
            buckets.append(Bucket(split["train"], split["test"], f"bucket {t}"))
    num_classes = int(max(int(s.labels.max()) for b in buckets for s in (b.train, b.test) if len(s))) + 1
    return Stream(f"buckets-npz:{path}", buckets, shape, num_classes, value_range=(0.0, 1.0) if uint8 else None)
