"""`mnist-permuted:PATH` and `mnist-rotated:PATH`: the GEM paper's MNIST streams, read from `mnist.npz`.

The file is the one the GEM project's data/raw/raw.py fetches (Keras's copy of MNIST): arrays x_train
uint8 [60000, 28, 28], y_train [60000], x_test uint8 [10000, 28, 28] and y_test; rows flattened to 784
are read as well. As in GEM (data/mnist_permutations.py, data/mnist_rotations.py and main.py's
samples_per_task):
- 20 tasks by default, each trained on its own random 1000 of the training digits;
- permuted: every task, the first included, applies its own fixed random pixel permutation;
- rotated: task t rotates every digit by one angle drawn uniformly from [180·t/n, 180·(t+1)/n)
  degrees, counter-clockwise with nearest-neighbour sampling like PIL's `rotate`;
- each task is tested on the whole test set under its transform, or on one fixed random subset of it
  (the same digits for every task) when a test sample count is given.
Digits stay uint8 in memory and are transformed per batch, so 20 transformed copies of the test set
are never held at once.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .base import Bucket, ScaledSet, Stream
from .npz import load_npz

SOURCE = ("the GEM project's data/raw/raw.py fetches it (Keras's MNIST, "
          "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz)")
KEYS = ("x_train", "y_train", "x_test", "y_test")
MAX_ANGLE = 180.0


def load_mnist_npz(path: str | Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): images uint8 [N, 1, 28, 28], labels int64 0..9."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mnist: no file at {path}; expected mnist.npz with arrays {', '.join(KEYS)}; {SOURCE}")
    with load_npz(path, f"mnist.npz with arrays {', '.join(KEYS)}; {SOURCE}") as arrays:
        missing = [k for k in KEYS if k not in arrays.files]
        if missing:
            raise ValueError(f"mnist: {path} lacks {', '.join(missing)}; expected arrays {', '.join(KEYS)} "
                             f"(found {', '.join(sorted(arrays.files))})")
        out = []
        for part in ("train", "test"):
            x = _images(arrays[f"x_{part}"], f"x_{part}", path)
            out += [x, _labels(arrays[f"y_{part}"], f"y_{part}", len(x), path)]
    return tuple(out)


def _images(a: np.ndarray, key: str, path: Path) -> torch.Tensor:
    if not (a.ndim == 3 and a.shape[1:] == (28, 28) or a.ndim == 2 and a.shape[1] == 784):
        raise ValueError(f"mnist: {path}: {key} has shape {a.shape}; expected N×28×28 or N×784")
    if np.issubdtype(a.dtype, np.floating):
        if a.size and (a.min() < 0 or a.max() > 1):
            raise ValueError(f"mnist: {path}: {key} is {a.dtype} with values outside [0, 1]; expected uint8 "
                             "0..255 or floats in [0, 1]")
        a = np.rint(a * 255)
    elif a.dtype != np.uint8:
        raise ValueError(f"mnist: {path}: {key} has dtype {a.dtype}; expected uint8")
    return torch.from_numpy(a.astype(np.uint8)).reshape(-1, 1, 28, 28)


def _labels(a: np.ndarray, key: str, n: int, path: Path) -> torch.Tensor:
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer) or len(a) != n:
        raise ValueError(f"mnist: {path}: {key} has shape {a.shape} and dtype {a.dtype}; expected {n} integer labels")
    if len(a) and (a.min() < 0 or a.max() > 9):
        raise ValueError(f"mnist: {path}: {key} has labels {a.min()}..{a.max()}; expected 0..9")
    return torch.from_numpy(a.astype(np.int64))


def _tasks(path, kind: str, num_tasks: int, samples_per_task: int | None, test_samples: int | None,
           seed: int, transform_for) -> Stream:
    if num_tasks < 1:
        raise ValueError(f"mnist-{kind}: the task count must be >= 1, got {num_tasks}")
    xtr, ytr, xte, yte = load_mnist_npz(path)
    g = torch.Generator().manual_seed(seed)
    if test_samples is not None and test_samples < len(yte):
        keep = torch.randperm(len(yte), generator=g)[:test_samples]
        xte, yte = xte[keep], yte[keep]
    n = len(ytr) if samples_per_task is None else min(samples_per_task, len(ytr))
    buckets, params = [], []
    for t in range(num_tasks):
        name, param, transform = transform_for(t, g)
        chosen = torch.randperm(len(ytr), generator=g)[:n]
        buckets.append(Bucket(ScaledSet(xtr[chosen], ytr[chosen], transform), ScaledSet(xte, yte, transform), name))
        params.append(param)
    info = {"source": str(path), "seed": seed, "samples_per_task": n, "test_samples_per_task": len(yte)}
    if kind == "rotated":
        info["angles"] = params
    return Stream(f"mnist-{kind}", buckets, (1, 28, 28), 10, info=info, value_range=(0.0, 1.0))


def mnist_permuted(path: str | Path, num_tasks: int = 20, samples_per_task: int | None = 1000,
                   test_samples: int | None = None, seed: int = 0) -> Stream:
    def permutation(t: int, g: torch.Generator):
        perm = torch.randperm(784, generator=g)
        return f"permutation {t}", None, lambda x: x.reshape(-1, 784)[:, perm].reshape(-1, 1, 28, 28)
    return _tasks(path, "permuted", num_tasks, samples_per_task, test_samples, seed, permutation)


def mnist_rotated(path: str | Path, num_tasks: int = 20, samples_per_task: int | None = 1000,
                  test_samples: int | None = None, seed: int = 0) -> Stream:
    from torchvision.transforms.v2 import functional as TF  # slow to import: only this stream needs it

    def rotation(t: int, g: torch.Generator):
        low, high = MAX_ANGLE * t / num_tasks, MAX_ANGLE * (t + 1) / num_tasks
        angle = low + (high - low) * float(torch.rand((), generator=g))
        return (f"rotated {angle:.1f}°", angle,
                lambda x: TF.rotate(x, angle, interpolation=TF.InterpolationMode.NEAREST))
    return _tasks(path, "rotated", num_tasks, samples_per_task, test_samples, seed, rotation)
