"""`cifar100-split:PATH`: CIFAR-100 split as in the GEM paper, 20 buckets of 5 classes.

PATH is the folder of the python release (cifar-100-python.tar.gz from
https://www.cs.toronto.edu/~kriz/cifar.html, unpacked): files `train`, `test` and `meta`. `train` and
`test` are pickled dicts with b"data" (uint8 [N, 3072]: 1024 red, then 1024 green, then 1024 blue
values, row by row of 32) and b"fine_labels"; `meta` holds b"fine_label_names".

Bucket t holds the classes at positions k·t .. k·t+k-1 of the class order (k = 100 / buckets): the
label ids in order, as GEM does (classes 0–4, 5–9, …), or with class_order="shuffled" a random
order drawn from the seed. A bucket has every training and test image of its classes (2,500 and 500),
in file order, unless a sample count asks for a seeded random subset. Labels stay the fine labels
0..99 (one shared head); pixels are scaled to [0, 1] as in GEM, without normalisation.

The pickles are read by an unpickler that builds only plain containers and numpy arrays, so a
tampered file cannot run code.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from .base import Bucket, ScaledSet, Stream

SOURCE = "get cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and unpack it"
NUM_CLASSES = 100
CLASS_ORDERS = ("label", "shuffled")


class _ArrayUnpickler(pickle.Unpickler):
    ALLOWED = {
        (module, name)
        for package in ("numpy.core", "numpy._core")
        for module, name in ((f"{package}.multiarray", "_reconstruct"), (f"{package}.multiarray", "scalar"),
                             (f"{package}.numeric", "_frombuffer"))
    } | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # protocol 2 writes bytes via encode

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only arrays and plain data are expected")
        return super().find_class(module, name)


def _unpickle(folder: Path, name: str) -> dict:
    file = folder / name
    if not file.is_file():
        raise FileNotFoundError(f"cifar100-split: {file} is missing; expected the folder cifar-100-python with "
                                f"files train, test and meta; {SOURCE}")
    try:
        with open(file, "rb") as f:
            value = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as e:  # a damaged pickle fails in many ways
        raise ValueError(f"cifar100-split: {file} cannot be read as the python release's pickle ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"cifar100-split: {file} holds a {type(value).__name__}, expected a dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in value.items()}


def _part(folder: Path, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    d = _unpickle(folder, name)
    if "data" not in d or "fine_labels" not in d:
        raise ValueError(f"cifar100-split: {folder / name} lacks data or fine_labels (has {', '.join(map(str, d))})")
    x = np.asarray(d["data"])
    y = np.asarray(d["fine_labels"])
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        raise ValueError(f"cifar100-split: {folder / name}: data is {x.dtype} {x.shape}, expected uint8 N×3072")
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer) or (len(y) and (y.min() < 0 or y.max() >= NUM_CLASSES)):
        raise ValueError(f"cifar100-split: {folder / name}: fine_labels must be {len(x)} integers 0..99")
    return torch.from_numpy(x).reshape(-1, 3, 32, 32), torch.from_numpy(y.astype(np.int64))


def _subset(x: torch.Tensor, y: torch.Tensor, n: int | None, g: torch.Generator):
    if n is None or n >= len(y):
        return x, y
    keep = torch.randperm(len(y), generator=g)[:n].sort().values  # a subset, still in file order
    return x[keep], y[keep]


def cifar100_split(path: str | Path, num_buckets: int = 20, class_order: str = "label",
                   samples_per_bucket: int | None = None, test_samples_per_bucket: int | None = None,
                   seed: int = 0) -> Stream:
    if num_buckets < 1 or NUM_CLASSES % num_buckets:
        raise ValueError(f"cifar100-split needs a bucket count that divides the 100 classes, got {num_buckets}")
    if class_order not in CLASS_ORDERS:
        raise ValueError(f"class order must be one of {', '.join(CLASS_ORDERS)}, got {class_order!r}")
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"cifar100-split: no folder at {folder}; expected cifar-100-python with files "
                                f"train, test and meta; {SOURCE}")
    xtr, ytr = _part(folder, "train")
    xte, yte = _part(folder, "test")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in _unpickle(folder, "meta").get("fine_label_names", [])]
    if len(names) != NUM_CLASSES:
        raise ValueError(f"cifar100-split: {folder / 'meta'} has {len(names)} fine_label_names, expected 100")

    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(NUM_CLASSES, generator=g) if class_order == "shuffled" else torch.arange(NUM_CLASSES)
    per = NUM_CLASSES // num_buckets
    buckets = []
    for classes in order.split(per):
        tr, te = torch.isin(ytr, classes), torch.isin(yte, classes)
        if not tr.any() or not te.any():
            raise ValueError(f"cifar100-split: {folder} has no {'training' if not tr.any() else 'test'} images of "
                             f"classes {classes.tolist()}; expected the full release (500 and 100 per class)")
        train = ScaledSet(*_subset(xtr[tr], ytr[tr], samples_per_bucket, g))
        test = ScaledSet(*_subset(xte[te], yte[te], test_samples_per_bucket, g))
        buckets.append(Bucket(train, test, "classes " + ",".join(str(c) for c in classes.tolist())))
    info = {"source": str(folder), "class_order": class_order, "seed": seed,
            "bucket_classes": [c.tolist() for c in order.split(per)]}
    return Stream("cifar100-split", buckets, (3, 32, 32), NUM_CLASSES, names, info, value_range=(0.0, 1.0))
