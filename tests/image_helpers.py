"""A small stream of textured images (random noise PNGs, so two crops of one image differ), written by the
test, for the tests of how images are stored, viewed and augmented, in-process and through the service."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cl_engine.streams import Bucket, Stream
from cl_engine.streams.images import ImageSet, normalised_range

SIZE = 16
CLASSES = ["a", "b", "c"]
IMAGES_PER_BUCKET = 12


def noise_stream(folder: Path, buckets: int = 2) -> Stream:
    rng = np.random.default_rng(0)
    sets = []
    for b in range(buckets):
        paths, labels = [], []
        for k in range(IMAGES_PER_BUCKET):
            label = k % len(CLASSES)
            pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            pixels[..., label] //= 2  # a little signal per class
            path = folder / f"{b}" / f"{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
            paths.append(path)
            labels.append(label)
        sets.append(ImageSet(paths, torch.tensor(labels), SIZE, {}))
    return Stream("noise", [Bucket(s, s, str(b)) for b, s in enumerate(sets)], (3, SIZE, SIZE), len(CLASSES),
                  list(CLASSES), value_range=normalised_range(),
                  learner_defaults={"augment": "crop-flip", "uint8_inputs": "imagenet"})


def write_clear(root: Path, buckets: int = 2, per_class: int = 6, size: tuple[int, int] = (40, 30)) -> Path:
    """A CLEAR-layout folder (the current release's train/, streaming protocol) of real JPEG photos of
    random texture, a few of them grayscale; returns the root to build `clear:ROOT` from."""
    import json

    rng = np.random.default_rng(1)
    names = ["BACKGROUND", *CLASSES]
    folder = root / "train"
    folder.mkdir(parents=True)
    (folder / "class_names.txt").write_text("\n".join(names) + "\n")
    index = {}
    for b in range(1, buckets + 1):
        index[str(b)] = {}
        for label, name in enumerate(names):
            metadata = {}
            for k in range(per_class):
                fid = str(10_000 * b + 100 * label + k)
                rel = f"labeled_images/{b}/{name}/{fid}.jpg"
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                pixels[..., label % 3] //= 2  # a little signal per class
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                image = Image.fromarray(pixels)
                (image.convert("L") if k == 0 else image).save(folder / rel, "JPEG", quality=90)
                metadata[fid] = {"ID": fid, "EXT": "jpg", "IMG_PATH": rel,
                                 "DATE_UPLOADED": str(1_100_000_000 + 10_000_000 * b + 3600 * (label * per_class + k))}
            meta = f"labeled_metadata/{b}/{name}.json"
            (folder / meta).parent.mkdir(parents=True, exist_ok=True)
            (folder / meta).write_text(json.dumps(metadata))
            index[str(b)][name] = meta
    (folder / "labeled_metadata.json").write_text(json.dumps(index))
    return root
