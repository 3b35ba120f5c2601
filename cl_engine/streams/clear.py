"""`clear:PATH`: CLEAR-10 and CLEAR-100 (https://clear-benchmark.github.io), either public release.

PATH is one of
- the current release: a folder holding the split folders `train/` (or `train_image_only/`) and
  `test/`, or one split folder itself. A split folder holds `class_names.txt` (one name a line, the
  line order is the class index), `labeled_metadata.json` ({bucket: {class: path of the class's
  metadata}}), `labeled_metadata/<b>/<class>.json` ({flickr id: {"IMG_PATH", "DATE_UPLOADED", …}}),
  `labeled_images/<b>/<class>/<id>.jpg` and, in `train/` only, `features/<type>/features.json`
  ({bucket: {class: "features/<type>/<b>/<class>.pth"}}, each a saved {flickr id: tensor[2048]});
- the NeurIPS 2021 release: a folder holding `class_names.txt`, `labeled_images/`,
  `labeled_metadata/` and `training_folder/` with `filelists/<b>/all.txt` (lines
  "labeled_images/<b>/<class>/<id>.jpg <class index>"), `features/<type>/<b>/all.pth` (a saved tuple
  (tensor[N, 2048], labels) in all.txt order) and `testset_ratio_0.3/split_<seed>/<b>/{train,test}.txt`.

Which buckets, as the official loaders (Avalanche's, Renate's) take them, ordered as integers:
- current release: every bucket labeled_metadata.json lists. CLEAR-10 lists "1".."10" (its bucket 0
  is unlabeled, for pre-training); a release that labels bucket 0 (CLEAR-100) trains on it too: 11
  buckets.
- NeurIPS 2021 release: the buckets training_folder/bucket_indices.json lists, in its order. Without
  that file, the folders of training_folder/filelists except 0; a labelled bucket 0 skipped that
  way (it has a filelists/0/all.txt) is reported (info["skipped_labeled_buckets"] and a warning).
Inside a bucket, samples are ordered by upload time (DATE_UPLOADED) where the metadata gives it;
samples without one keep their file order, after the timed ones (training shuffles them anyway
unless asked for upload order: schedule.py).

Protocols, as in the CLEAR paper:
- streaming: a bucket is trained on and tested on in full. The test set of bucket i is then its own
  training data, so in the accuracy matrix only the entries above the diagonal (R[i][j], j > i:
  next-domain accuracy and forward transfer) measure data the model has not seen. That is the
  protocol's point (the next bucket is the test set of the current model, and no data is held back),
  and the stream's info says so, so nobody reads the diagonal as held-out accuracy.
- iid: each bucket's 70/30 split, from the release's split files (`--split-seed` picks split_<seed>)
  or the current release's official `train/` and `test/` folders. Every entry is held out.

Modes: `images` decodes files on demand (see images.py; unreadable files are skipped, counted and
reported in info["skipped"]); `features` loads the pre-extracted vectors (input (2048,), for the
`linear` model).
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch

from .base import Bucket, SampleSet, Stream, TensorSet
from .images import ImageSet, normalised_range, record_skip, skipped_total, usable_images

PUBLISHED = "https://clear-benchmark.github.io"
EXPECTED = (
    "either the current release (a folder with train/ or train_image_only/, and test/, each holding "
    "class_names.txt, labeled_metadata.json, labeled_metadata/<b>/<class>.json and "
    "labeled_images/<b>/<class>/<id>.jpg, train/ also features/moco_b0/features.json; or one such split "
    "folder) or the NeurIPS 2021 release (a folder with class_names.txt, labeled_images/, "
    "labeled_metadata/ and training_folder/filelists/<b>/all.txt)"
)
MODES = ("images", "features")
PROTOCOLS = ("streaming", "iid")
TRAIN_FOLDERS = ("train", "train_image_only")


class ClearLayoutError(FileNotFoundError):
    """The folder is not (or not all of) a CLEAR release."""

    def __init__(self, root: Path, problem: str):
        super().__init__(f"CLEAR at {root}: {problem}. Expected {EXPECTED}. "
                         f"CLEAR-10 and CLEAR-100 are published at {PUBLISHED}")


@dataclass
class _Sample:
    label: int
    image: Path  # where its image file should be, whether or not it is there
    uploaded: float | None  # DATE_UPLOADED in seconds, where the metadata gives it
    feature: torch.Tensor | None = None


def clear_stream(path: str | Path, mode: str = "images", protocol: str = "streaming", split_seed: int = 0,
                 image_size: int = 224, feature_type: str = "moco_b0") -> Stream:
    if mode not in MODES:
        raise ValueError(f"CLEAR mode must be one of {', '.join(MODES)}, got {mode!r}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"CLEAR protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if image_size < 1:
        raise ValueError(f"image size must be >= 1, got {image_size}")
    root = Path(path)
    if not root.is_dir():
        raise ClearLayoutError(root, "no such folder")
    loader = _neurips2021 if (root / "training_folder").is_dir() else _current_release
    if split_seed != 0 and (loader is _current_release or protocol != "iid"):
        where = ("this is the current release, whose iid protocol uses its one official train/ and test/ split"
                 if loader is _current_release else "the streaming protocol trains and tests on whole buckets")
        raise ValueError(f"split seed {split_seed} would be ignored: it picks one of the NeurIPS 2021 release's "
                         f"70/30 splits (training_folder/testset_ratio_0.3/split_<seed>) for the iid protocol, and "
                         f"{where}; leave it at 0")
    names, buckets, info = loader(root, mode, protocol, split_seed, feature_type)

    skipped: dict = {}
    stream_buckets = []
    for b, train, test in buckets:
        train_set = _sample_set(train, mode, image_size, skipped, root, f"bucket {b}")
        test_set = train_set if test is None else _sample_set(test, mode, image_size, skipped, root,
                                                              f"bucket {b} (test split)")
        stream_buckets.append(Bucket(train_set, test_set, str(b)))
    if skipped_total(skipped):
        warnings.warn(f"CLEAR at {root}: skipped {skipped_total(skipped)} unusable samples "
                      f"({', '.join(f'{k} {v}' for k, v in skipped.items() if k != 'examples')}); "
                      "see the stream's info['skipped']")

    if mode == "images":
        shape = (3, image_size, image_size)
    else:
        shapes = {tuple(s.x.shape[1:]) for bucket in stream_buckets for s in (bucket.train, bucket.test)}
        if len(shapes) > 1:
            raise ClearLayoutError(root, f"buckets have feature vectors of sizes {sorted(shapes)}, expected one size")
        shape = shapes.pop()
    undated = sum(s.uploaded is None for _, train, test in buckets for s in train + (test or []))
    info.setdefault("skipped_labeled_buckets", [])
    info.update(
        mode=mode, protocol=protocol, image_size=image_size if mode == "images" else None,
        feature_type=feature_type if mode == "features" else None,
        bucket_names=[str(b) for b, _, _ in buckets],
        samples_without_upload_time=undated,
        held_out=("streaming protocol: each bucket is trained and tested on in full, so only accuracies "
                  "R[i][j] with j > i (next-domain, forward transfer) are on unseen data"
                  if protocol == "streaming" else "iid protocol: every bucket's test split is held out"),
        skipped=skipped,  # the same dict the image sets count decode failures in, so it stays current
    )
    # images: [0, 1] pixels after ImageNet normalisation; features: not declared (the default bound)
    value_range = normalised_range() if mode == "images" else None
    # images: training samples are stored as uint8 pixels; the learner normalises and augments them
    defaults = {"augment": "crop-flip", "uint8_inputs": "imagenet"} if mode == "images" else {}
    return Stream(stream_name(names), stream_buckets, shape, len(names), names, info, value_range, defaults)


def stream_name(class_names: list[str]) -> str:
    """clear10 or clear100: named by the classes class_names.txt lists besides BACKGROUND."""
    return f"clear{sum(n != 'BACKGROUND' for n in class_names)}"


# -- the two releases -> (class names, [(bucket, train samples, test samples or None)], info) --------------------


def _current_release(root: Path, mode: str, protocol: str, split_seed: int, feature_type: str):
    def is_split(folder: Path) -> bool:
        return (folder / "labeled_metadata.json").is_file()

    if is_split(root):
        train_folder = root
    else:
        found = [root / n for n in TRAIN_FOLDERS if is_split(root / n)]
        if protocol == "streaming" and not found and is_split(root / "test"):
            found = [root / "test"]
        if not found:
            raise ClearLayoutError(root, "found no labeled_metadata.json here, nor in train/, train_image_only/ "
                                         "or test/, and no training_folder/")
        if mode == "features":  # only train/ comes with features; prefer it where both are there
            found.sort(key=lambda f: not (f / "features").is_dir())
        train_folder = found[0]

    names, train = _read_split_folder(root, train_folder, mode, feature_type)
    info = {"release": "current", "train_folder": str(train_folder)}
    if protocol == "streaming":
        return names, [(b, samples, None) for b, samples in train.items()], info

    test_folder = train_folder.parent / "test"
    if test_folder == train_folder or not is_split(test_folder):
        raise ClearLayoutError(root, f"the iid protocol trains on a training split and tests on the official test/ "
                                     f"next to it, but {train_folder} has no such partner: {test_folder} is no split "
                                     "folder (point PATH at the folder holding train/ and test/)")
    test_names, test = _read_split_folder(root, test_folder, mode, feature_type)
    if test_names != names:
        raise ClearLayoutError(root, f"{test_folder}/class_names.txt lists {test_names}, but "
                                     f"{train_folder}/class_names.txt lists {names}")
    if sorted(test) != sorted(train):
        raise ClearLayoutError(root, f"{train_folder} has buckets {sorted(train)} but {test_folder} has {sorted(test)}")
    info["test_folder"] = str(test_folder)
    return names, [(b, train[b], test[b]) for b in sorted(train)], info


def _read_split_folder(root: Path, folder: Path, mode: str, feature_type: str):
    """Class names and {bucket: time-ordered samples} of one split folder of the current release."""
    names = _class_names(root, folder / "class_names.txt")
    index = _read_json(root, folder / "labeled_metadata.json")
    buckets = _bucket_ids(root, index.keys(), folder / "labeled_metadata.json", keep_zero=True)
    feature_index = None
    if mode == "features":
        features_json = folder / "features" / feature_type / "features.json"
        if not features_json.is_file():
            raise ClearLayoutError(root, f"features mode needs {features_json}, which is missing (the current "
                                         "release ships features in train/ only: use --clear-mode images, or "
                                         "the streaming protocol on train/)")
        feature_index = _read_json(root, features_json)
    out = {}
    for b, key in buckets.items():
        samples = []
        for label, name in enumerate(names):
            metadata_file = _indexed_file(root, folder, index, key, name, f"labeled_metadata/{b}/{name}.json")
            metadata = _read_json(root, metadata_file)
            if not isinstance(metadata, dict) or not all(isinstance(m, dict) for m in metadata.values()):
                raise ClearLayoutError(root, f"{metadata_file} is not a dict {{flickr id: {{metadata}}}}")
            features = None
            if feature_index is not None:
                pth = _indexed_file(root, folder, feature_index, key, name, f"features/{feature_type}/{b}/{name}.pth")
                features = {str(k): v for k, v in _load_tensors(root, pth, "dict").items()}
            for flickr_id, meta in metadata.items():
                image = folder / meta.get("IMG_PATH", f"labeled_images/{b}/{name}/{flickr_id}.jpg")
                sample = _Sample(label, image, _upload_time(meta))
                if features is not None:
                    sample.feature = features.get(str(flickr_id))
                samples.append(sample)
        out[b] = _time_ordered(samples)
    return names, out


def _neurips2021(root: Path, mode: str, protocol: str, split_seed: int, feature_type: str):
    names = _class_names(root, root / "class_names.txt")
    training = root / "training_folder"
    filelists = training / "filelists"
    if not filelists.is_dir():
        raise ClearLayoutError(root, f"{filelists} is missing")
    indices_json = training / "bucket_indices.json"
    skipped_labeled = []
    if indices_json.is_file():
        listed = _read_json(root, indices_json)
        if not isinstance(listed, list):
            raise ClearLayoutError(root, f"{indices_json} holds a {type(listed).__name__}, expected a list of bucket "
                                         "numbers")
        buckets = list(_bucket_ids(root, listed, indices_json, keep_zero=True, sort=False))
    else:
        buckets = list(_bucket_ids(root, [d.name for d in filelists.iterdir() if d.is_dir()], filelists))
        if (filelists / "0" / "all.txt").is_file():
            skipped_labeled = [0]
            warnings.warn(f"CLEAR at {root}: bucket 0 is labelled ({filelists / '0' / 'all.txt'}), but there is no "
                          f"{indices_json} to say it is trained on: skipped, as CLEAR-10's pre-training bucket")
    split = training / "testset_ratio_0.3" / f"split_{split_seed}"
    if protocol == "iid" and not split.is_dir():
        seeds = sorted(d.name for d in split.parent.glob("split_*"))
        raise ClearLayoutError(root, f"the iid protocol with split seed {split_seed} needs {split} "
                                     f"(found: {', '.join(seeds) or 'none'})")
    uploaded = _UploadTimes(root, root / "labeled_metadata")
    out = []
    for b in buckets:
        all_txt = filelists / str(b) / "all.txt"
        lines = _filelist(root, all_txt, len(names))
        samples = [_Sample(label, root / rel, uploaded.get(b, rel)) for rel, label in lines]
        if mode == "features":
            pth = training / "features" / feature_type / str(b) / "all.pth"
            vectors, labels = _load_tensors(root, pth, "pair")
            vectors = torch.stack(list(vectors)) if isinstance(vectors, (list, tuple)) else vectors
            if len(vectors) != len(lines) or [int(y) for y in labels] != [label for _, label in lines]:
                raise ClearLayoutError(root, f"{pth} holds {len(vectors)} vectors whose labels do not match the "
                                             f"{len(lines)} lines of {all_txt}")
            for sample, vector in zip(samples, vectors):
                sample.feature = vector
        if protocol == "streaming":
            out.append((b, _time_ordered(samples), None))
            continue
        by_path = {rel: s for (rel, _), s in zip(lines, samples)}
        parts = []
        for part in ("train", "test"):
            listed = _filelist(root, split / str(b) / f"{part}.txt", len(names))
            unknown = [rel for rel, _ in listed if rel not in by_path]
            if unknown:
                raise ClearLayoutError(root, f"{split / str(b) / f'{part}.txt'} lists {unknown[0]}, which "
                                             f"{all_txt} does not ({len(unknown)} such lines)")
            parts.append(_time_ordered([by_path[rel] for rel, _ in listed]))
        out.append((b, *parts))
    info = {"release": "neurips2021", "root": str(root), "skipped_labeled_buckets": skipped_labeled,
            "bucket_list": str(indices_json) if indices_json.is_file() else None}
    if protocol == "iid":
        info["split"] = str(split)
    return names, out, info


class _UploadTimes:
    """DATE_UPLOADED of the NeurIPS 2021 release's images, from labeled_metadata/<b>/<class>.json
    where that file is there (it is read once, on first use)."""

    def __init__(self, root: Path, folder: Path):
        self.root = root
        self.folder = folder
        self.loaded: dict[tuple[int, str], dict] = {}

    def get(self, bucket: int, image: str) -> float | None:
        rel = Path(image)
        key = (bucket, rel.parent.name)
        if key not in self.loaded:
            file = self.folder / str(bucket) / f"{rel.parent.name}.json"
            self.loaded[key] = _read_json(self.root, file) if file.is_file() else {}
        meta = self.loaded[key].get(rel.stem)
        return _upload_time(meta) if meta else None


# -- building the sets ------------------------------------------------------------------------------------------------


def _sample_set(samples: list[_Sample], mode: str, image_size: int, skipped: dict, root: Path,
                what: str) -> SampleSet:
    if mode == "features":
        kept = []
        for s in samples:
            if s.feature is None:
                record_skip(skipped, "missing_features", s.image)
            else:
                kept.append(s)
        if not kept:
            raise ClearLayoutError(root, f"{what} has no samples with a feature vector")
        dims = {s.feature.numel() for s in kept}
        if len(dims) > 1:
            raise ClearLayoutError(root, f"{what} has feature vectors of sizes {sorted(dims)}, expected one size")
        vectors = torch.stack([s.feature.flatten() for s in kept]).float()
        return TensorSet(vectors, torch.tensor([s.label for s in kept], dtype=torch.int64))
    keep = usable_images([s.image for s in samples], skipped)
    kept = [s for s, ok in zip(samples, keep) if ok]
    if not kept:
        raise ClearLayoutError(root, f"{what} has no readable image (of {len(samples)} listed, e.g. {samples[0].image})"
                               if samples else f"{what} lists no images")
    labels = torch.tensor([s.label for s in kept], dtype=torch.int64)
    return ImageSet([s.image for s in kept], labels, image_size, skipped)


def _time_ordered(samples: list[_Sample]) -> list[_Sample]:
    return sorted(samples, key=lambda s: (s.uploaded is None, s.uploaded or 0.0))  # stable: ties keep file order


def _upload_time(meta: dict) -> float | None:
    """DATE_UPLOADED as seconds: YFCC100M gives a Unix time (as a string); an ISO date is accepted too."""
    value = meta.get("DATE_UPLOADED")
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        try:
            seconds = datetime.fromisoformat(str(value)).timestamp()
        except ValueError:
            return None
    return seconds if math.isfinite(seconds) else None


# -- reading the files, each failure one ClearLayoutError -----------------------------------------------------------


def _read_json(root: Path, file: Path):
    if not file.is_file():
        raise ClearLayoutError(root, f"{file} is missing")
    try:
        return json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ClearLayoutError(root, f"{file} is not valid JSON ({e})") from None


def _class_names(root: Path, file: Path) -> list[str]:
    if not file.is_file():
        raise ClearLayoutError(root, f"{file} is missing")
    names = [line.strip() for line in file.read_text().splitlines() if line.strip()]
    if len(names) < 2:
        raise ClearLayoutError(root, f"{file} lists {len(names)} class names, expected one per line")
    return names


def _bucket_ids(root: Path, names, where: Path, keep_zero: bool = False, sort: bool = True) -> dict[int, str]:
    """{bucket number: its name as written} in integer order (`sort`) or as listed; bucket 0 only if
    `keep_zero`."""
    ids = {}
    for name in names:
        if not str(name).isdigit():
            raise ClearLayoutError(root, f"{where} has a bucket named {name!r}, expected bucket numbers 0..10")
        if int(name) != 0 or keep_zero:
            ids[int(name)] = str(name)
    if not ids:
        raise ClearLayoutError(root, f"{where} has no labeled bucket (1, 2, …)")
    return dict(sorted(ids.items())) if sort else ids


def _indexed_file(root: Path, folder: Path, index: dict, bucket: str, name: str, usual: str) -> Path:
    """The file an index JSON names for (bucket, class), relative to the split folder; failing that
    (an index written with paths of the machine the release was made on), the usual place."""
    entry = index.get(bucket)
    named = entry.get(name) if isinstance(entry, dict) else None
    for candidate in ([folder / named] if isinstance(named, str) else []) + [folder / usual]:
        if candidate.is_file():
            return candidate
    raise ClearLayoutError(root, f"{folder / usual} (class {name!r} of bucket {bucket}) is missing")


def _filelist(root: Path, file: Path, num_classes: int) -> list[tuple[str, int]]:
    if not file.is_file():
        raise ClearLayoutError(root, f"{file} is missing")
    out = []
    for n, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) >= num_classes:
            raise ClearLayoutError(root, f"{file} line {n} is {line!r}, expected '<image path> <class index "
                                         f"0..{num_classes - 1}>'")
        out.append((parts[0], int(parts[1])))
    return out


def _load_tensors(root: Path, file: Path, expected: str):
    """A torch file holding `expected`: "dict" ({flickr id: tensor}) or "pair" ((tensor[N, D], labels))."""
    if not file.is_file():
        raise ClearLayoutError(root, f"{file} is missing")
    try:
        value = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # torch reports unreadable files in many ways
        raise ClearLayoutError(root, f"{file} cannot be loaded ({e})") from None
    if expected == "dict" and not isinstance(value, dict):
        raise ClearLayoutError(root, f"{file} holds a {type(value).__name__}, expected a dict {{flickr id: tensor}}")
    if expected == "pair" and not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise ClearLayoutError(root, f"{file} holds a {type(value).__name__}, expected a tuple (tensor[N, 2048], labels)")
    return value
