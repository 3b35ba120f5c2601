"""A CLEAR-layout folder of made-up JPEG photos, for tests, benchmarks and the device check: what
`clear:PATH` (clear.py) reads, at any size, without the real release.

Either release's layout (clear.py describes both): the images at `labeled_images/<b>/<class>/<id>.jpg`
and their metadata at `labeled_metadata/<b>/<class>.json` ({id: {"ID", "EXT", "IMG_PATH",
"DATE_UPLOADED"}}), beside `class_names.txt`, and
- `release="current"`: all of it in the split folder `ROOT/train/`, indexed by `train/labeled_metadata.json`;
- `release="neurips2021"`: all of it in ROOT, listed by `training_folder/filelists/<b>/all.txt`.
Buckets are 1..`buckets` (CLEAR-10's labelled ones). Each image is smooth random content upscaled to its
size (a photo's low frequencies, not noise: it compresses like one), a little pixel noise (so two crops
differ), and a colour cast per class (something to learn); `grayscale` of each class's images are saved
grey, as some Flickr photos are. Sizes cycle through `sizes` ((width, height) pairs). Every image has its
own seed from (seed, bucket, class, index): the same arguments write the same bytes with any `workers`.
"""
from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

CLEAR10_CLASSES = ("BACKGROUND", "baseball", "bus", "camera", "cosplay", "dress", "hockey", "laptop", "racing",
                   "soccer", "sweater")
RELEASES = ("current", "neurips2021")


def write_clear_fixture(root: Path, buckets: int = 2, classes=CLEAR10_CLASSES, per_class: int = 6,
                        sizes=((40, 30),), seed: int = 0, release: str = "current", grayscale: int = 0,
                        workers: int = 1) -> dict:
    """Write the folder at `root` (made; `clear:ROOT` reads it) and say what it holds: {"release", "images",
    "buckets", "classes", "jpeg_sizes", "jpeg_bytes_median", "jpeg_bytes_total"}. `workers` > 1 encodes the
    JPEGs in that many processes."""
    if release not in RELEASES:
        raise ValueError(f"release must be one of {', '.join(RELEASES)}, got {release!r}")
    root = Path(root)
    folder = root / "train" if release == "current" else root
    folder.mkdir(parents=True, exist_ok=True)
    jobs, metadata = [], {}
    for b in range(1, buckets + 1):
        for label, name in enumerate(classes):
            entries = metadata.setdefault(b, {}).setdefault(name, {})
            for k in range(per_class):
                fid = f"{b}{label:02d}{k:05d}"
                rel = f"labeled_images/{b}/{name}/{fid}.jpg"
                size = tuple(sizes[(b * 7 + label * 3 + k) % len(sizes)])
                jobs.append((folder / rel, size, label, (seed, b, label, k), k < grayscale))
                entries[fid] = {"ID": fid, "EXT": "jpg", "IMG_PATH": rel,  # uploads interleave the classes
                                "DATE_UPLOADED": str(1_100_000_000 + 10_000_000 * b + 60 * (k * len(classes) + label))}
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            written = list(pool.map(_write_jpeg, jobs, chunksize=16))
    else:
        written = [_write_jpeg(job) for job in jobs]

    (folder / "class_names.txt").write_text("\n".join(classes) + "\n")
    index = {}
    for b, by_class in metadata.items():
        for name, entries in by_class.items():
            meta = f"labeled_metadata/{b}/{name}.json"
            (folder / meta).parent.mkdir(parents=True, exist_ok=True)
            (folder / meta).write_text(json.dumps(entries))
            index.setdefault(str(b), {})[name] = meta
        if release == "neurips2021":
            lists = folder / "training_folder" / "filelists" / str(b)
            lists.mkdir(parents=True, exist_ok=True)
            (lists / "all.txt").write_text("".join(f"{e['IMG_PATH']} {classes.index(name)}\n"
                                                   for name, entries in by_class.items() for e in entries.values()))
    if release == "current":
        (folder / "labeled_metadata.json").write_text(json.dumps(index))
    return {"release": release, "images": len(jobs), "buckets": buckets, "classes": len(classes),
            "jpeg_sizes": [list(s) for s in sizes], "jpeg_bytes_median": int(np.median(written)) if written else 0,
            "jpeg_bytes_total": int(sum(written))}


def _write_jpeg(job) -> int:
    """One photo-like JPEG (quality 90); its size in bytes."""
    from PIL import Image

    path, (w, h), label, seed, grey = job
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 25), max(2, w // 25), 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
    pixels = np.asarray(image).astype(np.int16) + rng.integers(-12, 13, (h, w, 3), dtype=np.int16)
    pixels[..., label % 3] += 20 + 4 * label  # a colour cast per class: something to learn
    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    (image.convert("L") if grey else image).save(path, "JPEG", quality=90)
    return path.stat().st_size
