"""A small stream of textured images (random noise PNGs, so two crops of one image differ), written by the
test, for the tests of how images are stored, viewed and augmented, in-process and through the service.
(A CLEAR-layout folder of JPEGs: cl_engine.streams.clear_fixture.)"""
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

