"""Image files as a SampleSet that decodes on demand, so a bucket never has to fit in memory decoded.

Every file is read as RGB whatever it holds (grayscale, RGBA, palette, CMYK), then for evaluation
resized (shorter side) and centre-cropped to `size`; for training a random resized crop and a
horizontal flip; both end in ImageNet normalisation.

Unreadable files are handled in two places and counted in one `skipped` dict ({reason: count,
"examples": [...]}) that the stream puts in its info, so the report shows them:
- before a set is built, `usable_images` drops files that are missing or do not decode in full
  (a truncated JPEG too: JPEGs are decoded at reduced scale, which still reads every byte of
  their data), so every label stays with its image;
- a file that decoded then but fails later (changed on disk during a run) is replaced by the
  normalised mean image (all zeros) and counted once as "failed_decode", rather than ending a run.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image
from tqdm import tqdm

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalised_range(mean=IMAGENET_MEAN, std=IMAGENET_STD) -> tuple[float, float]:
    """The closed range of [0, 1] pixels after normalisation by `mean` and `std` (channel-wise)."""
    return min((0 - m) / s for m, s in zip(mean, std)), max((1 - m) / s for m, s in zip(mean, std))
EXAMPLES_KEPT = 20


def record_skip(skipped: dict, reason: str, path: Path | str) -> None:
    skipped[reason] = skipped.get(reason, 0) + 1
    examples = skipped.setdefault("examples", [])
    if len(examples) < EXAMPLES_KEPT:
        examples.append(f"{reason}: {path}")


def skipped_total(skipped: dict) -> int:
    return sum(v for k, v in skipped.items() if k != "examples")


def image_problem(path: Path) -> str | None:
    """None when `path` decodes as an image, else "missing" or "corrupt"."""
    if not path.is_file():
        return "missing"
    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))  # DCT scaling: all data, 1/8 work
            im.load()
    except Exception:  # PIL reports bad data as OSError, SyntaxError, ValueError, struct.error, …
        return "corrupt"
    return None


def usable_images(paths: Sequence[Path], skipped: dict) -> list[bool]:
    """For each path, whether it passed the check; the others are counted in `skipped`."""
    keep = []
    for path in tqdm(paths, desc="checking images", unit="file", leave=False, disable=len(paths) < 2000):
        reason = image_problem(path)
        if reason:
            record_skip(skipped, f"{reason}_images", path)
        keep.append(reason is None)
    return keep


def read_rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return converted(im)


def converted(im: Image.Image, mode: str = "RGB") -> Image.Image:
    """A decoded image in `mode` (the server decodes the files it is sent with this too)."""
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # PIL warns when a palette with transparency goes straight to RGB
    return im.convert(mode)


def image_transforms(size: int) -> tuple[Callable, Callable]:
    """(evaluation, training) transforms from a PIL image to a normalised float32 [3, size, size]."""
    from torchvision.transforms import v2  # slow to import: only image streams pay for it

    finish = [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    evaluation = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size), *finish])
    training = v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(), *finish])
    return evaluation, training


def stored_transform(size: int) -> Callable:
    """PIL image -> uint8 [3, size, size]: the evaluation transform's geometry (resize, centre crop),
    not normalised; what the learner stores, and views (views.py) as the evaluation transform's output."""
    from torchvision.transforms import v2

    return v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size), v2.PILToTensor()])


class ImageSet:
    """Labelled image files, decoded per batch. Build it from paths that passed `usable_images`."""

    def __init__(self, paths: Sequence[Path], labels: torch.Tensor, size: int, skipped: dict):
        if len(paths) != labels.shape[0]:
            raise ValueError(f"{len(paths)} image paths for {labels.shape[0]} labels")
        if size < 1:
            raise ValueError(f"image size must be >= 1, got {size}")
        self.paths = list(paths)
        self.labels = labels.long()
        self.size = size
        self.skipped = skipped
        self.undecodable: set[int] = set()
        self.evaluation, self.training = image_transforms(size)
        self.store = stored_transform(size)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def _load(self, i: int, transform: Callable, blank: torch.Tensor | None = None) -> torch.Tensor:
        blank = torch.zeros(3, self.size, self.size) if blank is None else blank
        if i in self.undecodable:
            return blank
        try:
            image = read_rgb(self.paths[i])
        except Exception as e:  # see the module docstring: counted and replaced, never fatal
            self.undecodable.add(i)
            record_skip(self.skipped, "failed_decode", self.paths[i])
            warnings.warn(f"cannot decode {self.paths[i]} ({e}); it is read as a blank image from now on")
            return blank
        return transform(image)

    def batch(self, index: torch.Tensor, train: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        transform = self.training if train else self.evaluation
        index = index.long()
        if index.numel() == 0:
            return torch.empty(0, 3, self.size, self.size), self.labels[index]
        return torch.stack([self._load(int(i), transform) for i in index]), self.labels[index]

    def files(self, index: torch.Tensor) -> list[bytes]:
        """The files of samples `index`, byte for byte (a server decodes them as `stored` does)."""
        return [self.paths[int(i)].read_bytes() for i in index.long()]

    def stored(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples `index` as uint8 [n, 3, size, size], resized and centre cropped, for the learner to
        normalise and augment itself (a failed decode: the mean image, as in `batch`)."""
        index = index.long()
        mean = torch.tensor([round(255 * m) for m in IMAGENET_MEAN], dtype=torch.uint8).view(3, 1, 1)
        blank = mean.expand(3, self.size, self.size).clone()
        if index.numel() == 0:
            return torch.empty(0, 3, self.size, self.size, dtype=torch.uint8), self.labels[index]
        return torch.stack([self._load(int(i), self.store, blank) for i in index]), self.labels[index]
