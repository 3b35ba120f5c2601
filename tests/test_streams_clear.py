"""CLEAR loaders on small fixtures written in the exact layouts of both public releases."""
from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from cl_engine.__main__ import main
from cl_engine.streams import StreamOptions, build_stream
from cl_engine.streams.clear import PUBLISHED, ClearLayoutError, stream_name
from cl_engine.streams.images import IMAGENET_MEAN, IMAGENET_STD, ImageSet

NAMES = ["BACKGROUND", "baseball", "bus"]
CLEAR10_NAMES = ["BACKGROUND", "baseball", "bus", "camera", "cosplay", "dress", "hockey", "laptop", "racing",
                 "soccer", "sweater"]
BUCKETS = range(0, 11)  # 0 is the pre-training bucket: on disk, listed as labelled only where a release says so
DIM = 2048


def flickr_id(b: int, label: int, k: int) -> str:
    return str(10_000 * b + 100 * label + k)


def feature_of(fid: str) -> torch.Tensor:
    """A vector that tells which sample it belongs to: its first entry is the flickr id."""
    v = torch.zeros(DIM)
    v[0] = float(fid)
    return v


def write_image(path: Path, label: int, kind: str = "rgb") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = (40 + 80 * label, 200 - 60 * label, 90)
    if kind == "rgb":
        Image.new("RGB", (8, 6), color).save(path, "JPEG")
    elif kind == "gray":
        Image.new("L", (8, 6), 128).save(path, "JPEG")
    elif kind == "rgba":  # PNG content behind a .jpg name, as some Flickr downloads are
        Image.new("RGBA", (8, 6), (*color, 100)).save(path, "PNG")
    elif kind == "palette":
        im = Image.new("P", (8, 6), 1)
        im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
        im.save(path, "PNG", transparency=0)
    elif kind == "corrupt":
        path.write_bytes(b"\xff\xd8 this is not really a jpeg")
    elif kind == "truncated":  # an interrupted download: the header is whole, so PIL's verify() passes
        Image.new("RGB", (64, 48), color).save(path, "JPEG")
        path.write_bytes(path.read_bytes()[:300])
    elif kind != "missing":
        raise ValueError(kind)


def upload_times(b: int, n: int) -> list[int]:
    """Distinct upload times in a shuffled order, so time order differs from file order."""
    times = [1_100_000_000 + 10_000_000 * b + 3600 * k for k in range(n)]
    random.Random(b).shuffle(times)
    return times


def write_current_split(folder: Path, names=NAMES, per_class: int = 2, images: bool = True,
                        features: bool = True, special: dict | None = None,
                        labeled_zero: bool = False) -> dict[int, list[str]]:
    """A split folder of the current release; returns {bucket: flickr ids in upload-time order}.

    `special` maps a flickr id to an image kind (gray, rgba, palette, corrupt, missing). Bucket 0's
    files are written; labeled_metadata.json lists it only with `labeled_zero` (as CLEAR-100's does,
    CLEAR-10's does not).
    """
    special = special or {}
    folder.mkdir(parents=True)
    (folder / "class_names.txt").write_text("\n".join(names) + "\n")
    index, feature_index, expected = {}, {}, {}
    for b in sorted(BUCKETS, key=str):  # written in string order: "0", "1", "10", "2", …
        times = iter(upload_times(b, len(names) * per_class))
        index[str(b)], feature_index[str(b)], timed = {}, {}, []
        for label, name in enumerate(names):
            metadata, vectors = {}, {}
            for k in range(per_class):
                fid = flickr_id(b, label, k)
                img_path = f"labeled_images/{b}/{name}/{fid}.jpg"
                uploaded = next(times)
                metadata[fid] = {"ID": fid, "EXT": "jpg", "IMG_PATH": img_path, "DATE_UPLOADED": str(uploaded),
                                 "DATE_TAKEN": "2005-01-01 00:00:00.0"}
                if images:
                    write_image(folder / img_path, label, special.get(fid, "rgb"))
                vectors[fid] = feature_of(fid)
                timed.append((uploaded, fid))
            meta_rel = f"labeled_metadata/{b}/{name}.json"
            (folder / meta_rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / meta_rel).write_text(json.dumps(metadata))
            index[str(b)][name] = meta_rel
            if features:
                pth_rel = f"features/moco_b0/{b}/{name}.pth"
                (folder / pth_rel).parent.mkdir(parents=True, exist_ok=True)
                torch.save(vectors, folder / pth_rel)
                feature_index[str(b)][name] = pth_rel
        expected[b] = [fid for _, fid in sorted(timed)]
    if not labeled_zero:
        del index["0"], feature_index["0"]
    (folder / "labeled_metadata.json").write_text(json.dumps(index))
    if features:
        (folder / "features" / "moco_b0" / "features.json").write_text(json.dumps(feature_index))
    return expected


SPECIAL = {flickr_id(1, 1, 0): "gray", flickr_id(2, 1, 0): "rgba", flickr_id(2, 2, 1): "palette",
           flickr_id(3, 0, 1): "corrupt", flickr_id(4, 2, 0): "missing"}


def write_current(root: Path):
    """The current release as its two zips unpack: train/ (with features) and test/."""
    order = write_current_split(root / "train", special=SPECIAL)
    test_order = write_current_split(root / "test", per_class=1, features=False)
    return root, order, test_order


@pytest.fixture(scope="module")
def current(tmp_path_factory):
    """Shared by the tests that only read it."""
    return write_current(tmp_path_factory.mktemp("current") / "clear10")


def write_neurips2021(root: Path, names=NAMES, per_class: int = 5, seeds=(0,),
                      indices: list | None = list(range(1, 11))) -> dict[int, list[str]]:
    """The NeurIPS 2021 release; returns {bucket: image paths in upload-time order}. Every bucket 0..10
    has its labelled file lists; training_folder/bucket_indices.json lists `indices` (None: no such file)."""
    root.mkdir(parents=True)
    (root / "class_names.txt").write_text("\n".join(names))
    training = root / "training_folder"
    training.mkdir()
    if indices is not None:
        (training / "bucket_indices.json").write_text(json.dumps(indices))
    expected = {}
    for b in BUCKETS:
        times = iter(upload_times(b, len(names) * per_class))
        lines, vectors, labels, timed = [], [], [], []
        for label, name in enumerate(names):
            metadata = {}
            for k in range(per_class):
                fid = flickr_id(b, label, k)
                rel = f"labeled_images/{b}/{name}/{fid}.jpg"
                write_image(root / rel, label)
                uploaded = next(times)
                metadata[fid] = {"ID": fid, "IMG_PATH": rel, "DATE_UPLOADED": str(uploaded)}
                lines.append(f"{rel} {label}")
                vectors.append(feature_of(fid))
                labels.append(label)
                timed.append((uploaded, rel))
            (root / "labeled_metadata" / str(b)).mkdir(parents=True, exist_ok=True)
            (root / "labeled_metadata" / str(b) / f"{name}.json").write_text(json.dumps(metadata))
        expected[b] = [rel for _, rel in sorted(timed)]
        (training / "filelists" / str(b)).mkdir(parents=True)
        (training / "filelists" / str(b) / "all.txt").write_text("\n".join(lines))
        (training / "features" / "moco_b0" / str(b)).mkdir(parents=True)
        torch.save((torch.stack(vectors), labels), training / "features" / "moco_b0" / str(b) / "all.pth")
        for seed in seeds:
            shuffled = random.Random(seed * 100 + b).sample(lines, len(lines))
            n_test = round(0.3 * len(lines))
            split = training / "testset_ratio_0.3" / f"split_{seed}" / str(b)
            split.mkdir(parents=True)
            (split / "train.txt").write_text("\n".join(shuffled[n_test:]))
            (split / "test.txt").write_text("\n".join(shuffled[:n_test]))
    return expected


@pytest.fixture(scope="module")
def neurips2021(tmp_path_factory):
    root = tmp_path_factory.mktemp("neurips2021") / "clear10-public"
    return root, write_neurips2021(root)


def clear(path, **options):
    return build_stream(f"clear:{path}", StreamOptions(**options))


def ids_of(image_set: ImageSet) -> list[str]:
    return [p.stem for p in image_set.paths]


def unnormalise(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)


# -- current release -------------------------------------------------------------------------------------------------


def test_current_release_buckets_are_1_to_10_in_integer_order(current):
    root, _, _ = current
    with pytest.warns(UserWarning, match="skipped 2"):
        stream = clear(root, image_size=16)
    assert [b.name for b in stream.buckets] == [str(b) for b in range(1, 11)]
    assert stream.info["bucket_names"][-1] == "10" and stream.summary()["buckets"] == 10
    assert stream.class_names == NAMES and stream.num_classes == 3
    assert stream.input_shape == (3, 16, 16)
    assert stream.info["release"] == "current" and stream.info["train_folder"] == str(root / "train")


def test_current_release_counts_labels_and_upload_time_order(current):
    root, order, _ = current
    with pytest.warns(UserWarning):
        stream = clear(root, image_size=16)
    dropped = {flickr_id(3, 0, 1), flickr_id(4, 2, 0)}  # the corrupt and the missing file
    for bucket in stream.buckets:
        b = int(bucket.name)
        expected = [fid for fid in order[b] if fid not in dropped]
        assert ids_of(bucket.train) == expected, f"bucket {b} is not in upload-time order"
        assert bucket.train.labels.tolist() == [int(fid) // 100 % 100 for fid in expected]
        assert len(bucket.train) == (5 if b in (3, 4) else 6)
    assert [len(b.train) for b in stream.buckets] == stream.summary()["train_sizes"]


def test_streaming_protocol_tests_on_the_whole_bucket(current):
    root, _, _ = current
    with pytest.warns(UserWarning):
        stream = clear(root, image_size=16, protocol="streaming")
    assert all(b.test is b.train for b in stream.buckets)
    assert "j > i" in stream.info["held_out"]


def test_corrupt_and_missing_images_are_skipped_counted_and_reported(current):
    root, _, _ = current
    with pytest.warns(UserWarning, match="corrupt_images 1, missing_images 1|missing_images 1, corrupt_images 1"):
        stream = clear(root, image_size=16)
    skipped = stream.summary()["skipped"]
    assert skipped["corrupt_images"] == 1 and skipped["missing_images"] == 1
    assert any(flickr_id(3, 0, 1) in e for e in skipped["examples"])
    assert any(flickr_id(4, 2, 0) in e for e in skipped["examples"])


def test_a_truncated_jpeg_is_dropped_when_the_stream_is_built(tmp_path):
    bad = flickr_id(2, 1, 1)
    write_current_split(tmp_path / "train", per_class=2, features=False, special={bad: "truncated"})
    with pytest.warns(UserWarning, match="corrupt_images 1"):
        stream = clear(tmp_path, image_size=16)
    assert bad not in ids_of(stream.buckets[1].train) and len(stream.buckets[1].train) == 5
    assert any(bad in e for e in stream.summary()["skipped"]["examples"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left that fails to decode
        stream.buckets[1].train.batch(torch.arange(5))


def test_the_image_only_train_folder_is_found_and_pairs_with_test(tmp_path):
    order = write_current_split(tmp_path / "train_image_only", features=False)
    test_order = write_current_split(tmp_path / "test", per_class=1, features=False)
    stream = clear(tmp_path, image_size=16)
    assert stream.info["train_folder"] == str(tmp_path / "train_image_only")
    assert [b.name for b in stream.buckets] == [str(b) for b in range(1, 11)]
    assert all(ids_of(b.train) == order[int(b.name)] for b in stream.buckets)
    iid = clear(tmp_path, image_size=16, protocol="iid")
    assert all(ids_of(b.test) == test_order[int(b.name)] for b in iid.buckets)
    with pytest.raises(ClearLayoutError, match="feature"):
        clear(tmp_path, clear_mode="features")


def test_grayscale_rgba_and_palette_images_read_as_rgb(current):
    root, _, _ = current
    with pytest.warns(UserWarning):
        stream = clear(root, image_size=16)
    for b, fid in [(1, flickr_id(1, 1, 0)), (2, flickr_id(2, 1, 0)), (2, flickr_id(2, 2, 1))]:
        bucket = stream.buckets[b - 1]
        i = ids_of(bucket.train).index(fid)
        for train in (False, True):
            x, y = bucket.train.batch(torch.tensor([i]), train=train)
            assert x.shape == (1, 3, 16, 16) and x.dtype == torch.float32 and torch.isfinite(x).all()
            assert int(y) == int(fid) // 100 % 100
    gray = stream.buckets[0]
    x, _ = gray.train.batch(torch.tensor([ids_of(gray.train).index(flickr_id(1, 1, 0))]))
    rgb = unnormalise(x[0])
    assert torch.allclose(rgb[0], rgb[1], atol=1e-5) and torch.allclose(rgb[1], rgb[2], atol=1e-5)
    assert torch.allclose(rgb, torch.full_like(rgb, 128 / 255), atol=2 / 255)


def test_a_batch_is_decoded_on_demand_and_augmented_only_for_training(current):
    root, _, _ = current
    with pytest.warns(UserWarning):
        stream = clear(root, image_size=16)
    images = stream.buckets[0].train
    assert isinstance(images, ImageSet) and not hasattr(images, "x")
    everything = torch.arange(len(images))
    first, _ = images.batch(everything)
    again, _ = images.batch(everything)
    assert torch.equal(first, again)
    trained, y = images.batch(everything, train=True)
    assert trained.shape == first.shape and torch.equal(y, images.labels)


def test_an_image_that_fails_to_decode_is_counted_once_and_read_blank(tmp_path):
    root, _, _ = write_current(tmp_path / "clear10")  # its own copy: one file gets damaged
    with pytest.warns(UserWarning):
        stream = clear(root, image_size=16)
    images = stream.buckets[5].train
    full = images.paths[0].read_bytes()
    images.paths[0].write_bytes(full[: len(full) // 2])  # truncated: passes PIL's verify, fails to decode
    with pytest.warns(UserWarning, match="cannot decode"):
        x, y = images.batch(torch.arange(len(images)))
    assert torch.equal(x[0], torch.zeros(3, 16, 16)) and len(y) == len(images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second time it is known: no retry, no new warning
        x, _ = images.batch(torch.arange(len(images)))
    assert torch.equal(x[0], torch.zeros(3, 16, 16))
    assert stream.info["skipped"]["failed_decode"] == 1
    assert stream.summary()["skipped"]["failed_decode"] == 1


def test_iid_protocol_uses_the_official_train_and_test_folders(current):
    root, order, test_order = current
    with pytest.warns(UserWarning):
        stream = clear(root, image_size=16, protocol="iid")
    assert len(stream) == 10 and stream.info["test_folder"] == str(root / "test")
    for bucket in stream.buckets:
        b = int(bucket.name)
        assert bucket.test is not bucket.train
        assert ids_of(bucket.test) == test_order[b] and len(bucket.test) == 3
        assert len(bucket.train) == (5 if b in (3, 4) else 6)
    assert "held out" in stream.info["held_out"]


def test_pointing_at_the_train_split_folder_itself_works_for_both_protocols(current):
    root, order, test_order = current
    with pytest.warns(UserWarning):
        stream = clear(root / "train", image_size=16, protocol="iid")
    assert ids_of(stream.buckets[9].test) == test_order[10]
    with pytest.warns(UserWarning):
        assert len(clear(root / "train", image_size=16)) == 10


def test_iid_without_the_test_folder_says_where_it_looked(tmp_path):
    write_current_split(tmp_path / "train", per_class=1, features=False)
    with pytest.raises(ClearLayoutError, match=f"{tmp_path / 'test'} is no split folder"):
        clear(tmp_path, protocol="iid")
    write_current_split(tmp_path / "test", per_class=1, features=False)
    with pytest.raises(ClearLayoutError, match="tests on the official test/"):
        clear(tmp_path / "test", protocol="iid")  # the test split alone has no training partner


def test_features_mode_loads_the_vectors_in_upload_time_order(current):
    root, order, _ = current
    stream = clear(root, clear_mode="features")  # no images are read, so none are skipped
    assert stream.input_shape == (DIM,) and stream.info["mode"] == "features"
    for bucket in stream.buckets:
        x, y = bucket.train.batch(torch.arange(len(bucket.train)))
        assert [str(int(v)) for v in x[:, 0]] == order[int(bucket.name)]
        assert y.tolist() == [int(fid) // 100 % 100 for fid in order[int(bucket.name)]]
        assert bucket.test is bucket.train


def test_features_mode_iid_needs_test_features_which_the_current_release_lacks(current):
    root, _, _ = current
    with pytest.raises(ClearLayoutError, match=r"test/features/moco_b0/features.json.*--clear-mode images"):
        clear(root, clear_mode="features", protocol="iid")


def test_the_stream_is_named_after_the_classes_in_class_names_txt(tmp_path):
    write_current_split(tmp_path / "train", names=CLEAR10_NAMES, per_class=1, images=False)
    stream = clear(tmp_path, clear_mode="features")
    assert stream.name == "clear10" and stream.class_names == CLEAR10_NAMES and stream.num_classes == 11
    assert stream.buckets[0].train.labels.sort().values.tolist() == list(range(11))
    assert stream_name(["BACKGROUND"] + [f"c{i}" for i in range(100)]) == "clear100"
    assert stream_name([f"c{i}" for i in range(100)]) == "clear100"


# -- NeurIPS 2021 release -----------------------------------------------------------------------------------------------


def test_neurips2021_streaming_images(neurips2021):
    root, order = neurips2021
    stream = clear(root, image_size=16)
    assert stream.info["release"] == "neurips2021"
    assert [b.name for b in stream.buckets] == [str(b) for b in range(1, 11)]
    for bucket in stream.buckets:
        b = int(bucket.name)
        assert [str(p.relative_to(root)) for p in bucket.train.paths] == order[b]
        assert len(bucket.train) == 15 and bucket.test is bucket.train
    assert stream.info["skipped"] == {}


def test_neurips2021_features_follow_all_txt_rows_into_time_order(neurips2021):
    root, order = neurips2021
    stream = clear(root, clear_mode="features")
    for bucket in stream.buckets:
        x, y = bucket.train.batch(torch.arange(len(bucket.train)))
        assert [str(int(v)) for v in x[:, 0]] == [Path(rel).stem for rel in order[int(bucket.name)]]
        assert y.tolist() == [int(Path(rel).stem) // 100 % 100 for rel in order[int(bucket.name)]]


@pytest.mark.parametrize("mode", ["images", "features"])
def test_neurips2021_iid_is_the_70_30_split_of_the_split_files(neurips2021, mode):
    root, order = neurips2021
    stream = clear(root, clear_mode=mode, protocol="iid", image_size=16)
    for bucket in stream.buckets:
        b = int(bucket.name)
        split = root / "training_folder" / "testset_ratio_0.3" / "split_0" / str(b)
        assert (len(bucket.train), len(bucket.test)) == (11, 4)  # the split files: 70/30 of 15, rounded
        if mode == "images":
            train = [str(p.relative_to(root)) for p in bucket.train.paths]
            test = [str(p.relative_to(root)) for p in bucket.test.paths]
        else:
            rel = {Path(r).stem: r for r in order[b]}
            train = [rel[str(int(v))] for v in bucket.train.x[:, 0]]
            test = [rel[str(int(v))] for v in bucket.test.x[:, 0]]
        assert set(train) == {line.split()[0] for line in (split / "train.txt").read_text().splitlines()}
        assert set(test) == {line.split()[0] for line in (split / "test.txt").read_text().splitlines()}
        assert not set(train) & set(test)
        assert train == [r for r in order[b] if r in set(train)], "train split is not in upload-time order"


def test_neurips2021_split_seed_picks_the_split_folder(tmp_path):
    root = tmp_path / "public"
    write_neurips2021(root, per_class=2, seeds=(0, 1))
    a = clear(root, clear_mode="features", protocol="iid", split_seed=0)
    b = clear(root, clear_mode="features", protocol="iid", split_seed=1)
    assert any(not torch.equal(x.test.x, y.test.x) for x, y in zip(a.buckets, b.buckets))
    with pytest.raises(ClearLayoutError, match=r"split_4.*found: split_0, split_1"):
        clear(root, clear_mode="features", protocol="iid", split_seed=4)


def test_a_split_seed_that_would_be_ignored_is_refused(current, neurips2021):
    """Only the NeurIPS 2021 release's iid protocol has split files to pick from."""
    with pytest.raises(ValueError, match=r"split seed 2 would be ignored.*current release.*leave it at 0"):
        clear(current[0], protocol="iid", split_seed=2)
    with pytest.raises(ValueError, match=r"split seed 1 would be ignored.*streaming protocol"):
        clear(neurips2021[0], clear_mode="features", protocol="streaming", split_seed=1)
    default = clear(current[0], clear_mode="features", split_seed=0)  # the default is fine
    assert len(default) == len(BUCKETS) - 1  # bucket 0 skipped


# -- what goes wrong, said once and clearly -------------------------------------------------------------------------


def test_a_missing_root_names_the_path_the_layout_and_where_clear_is_published(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as e:
        clear(missing)
    message = str(e.value)
    assert str(missing) in message and "class_names.txt" in message and PUBLISHED in message


def test_an_empty_folder_is_not_a_release(tmp_path):
    with pytest.raises(ClearLayoutError, match="labeled_metadata.json") as e:
        clear(tmp_path)
    assert PUBLISHED in str(e.value)


@pytest.mark.parametrize("remove", ["class_names.txt", "labeled_metadata/7/bus.json"])
def test_an_incomplete_current_release_names_the_missing_file(tmp_path, remove):
    write_current_split(tmp_path / "train", per_class=1, images=False)
    (tmp_path / "train" / remove).unlink()
    with pytest.raises(ClearLayoutError) as e:
        clear(tmp_path, clear_mode="features")
    assert str(tmp_path / "train" / remove) in str(e.value) and PUBLISHED in str(e.value)


@pytest.mark.parametrize("remove", ["training_folder/filelists/4/all.txt",
                                    "training_folder/features/moco_b0/4/all.pth"])
def test_an_incomplete_neurips2021_release_names_the_missing_file(tmp_path, remove):
    write_neurips2021(tmp_path / "r", per_class=1)
    (tmp_path / "r" / remove).unlink()
    with pytest.raises(ClearLayoutError, match=str(tmp_path / "r" / remove)):
        clear(tmp_path / "r", clear_mode="features")


def test_a_bucket_with_no_readable_image_is_an_error_not_an_empty_bucket(tmp_path):
    special = {flickr_id(5, label, 0): "missing" for label in range(3)}
    write_current_split(tmp_path / "train", per_class=1, features=False, special=special)
    with pytest.raises(ClearLayoutError, match="bucket 5 has no readable image"):
        clear(tmp_path)


def test_bad_options_are_refused(current):
    root, _, _ = current
    with pytest.raises(ValueError, match="mode"):
        clear(root, clear_mode="pixels")
    with pytest.raises(ValueError, match="protocol"):
        clear(root, protocol="online")


def test_the_cli_reports_a_missing_root_in_one_line(tmp_path, capsys):
    assert main(["run", "--dataset", f"clear:{tmp_path / 'nowhere'}", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: CLEAR at") and PUBLISHED in err and len(err.strip().splitlines()) == 1


# -- end to end ---------------------------------------------------------------------------------------------------------


def run_cli(tmp_path, *args) -> dict:
    report = tmp_path / "report.json"
    assert main(["run", *args, "--batch-size", "4", "--device", "cpu", "--report", str(report), "--quiet"]) == 0
    return json.loads(report.read_text())


def test_end_to_end_current_release_images_streaming(current, tmp_path):
    root, _, _ = current
    with pytest.warns(UserWarning):
        report = run_cli(tmp_path, "--dataset", f"clear:{root}", "--image-size", "16", "--model", "mlp",
                         "--strategy", "replay", "--buffer-capacity", "20")
    matrix = report["accuracy_matrix"]
    assert len(matrix) == 10 and all(len(row) == 10 and None not in row for row in matrix)
    assert report["stream"]["name"] == "clear2" and report["stream"]["protocol"] == "streaming"
    assert report["stream"]["skipped"]["corrupt_images"] == 1


def test_end_to_end_neurips2021_features_iid(neurips2021, tmp_path):
    root, _ = neurips2021
    report = run_cli(tmp_path, "--dataset", f"clear:{root}", "--clear-mode", "features", "--protocol", "iid",
                     "--model", "linear", "--strategy", "naive")
    matrix = report["accuracy_matrix"]
    assert len(matrix) == 10 and all(len(row) == 10 and None not in row for row in matrix)
    assert report["stream"]["input_shape"] == [DIM] and report["stream"]["test_sizes"] == [4] * 10


# -- which buckets: bucket_indices.json and a labelled bucket 0 -------------------------------------------------------


def test_a_current_release_that_labels_bucket_0_trains_on_it_as_the_official_loaders(tmp_path):
    write_current_split(tmp_path / "clear100" / "train", labeled_zero=True, features=False)
    stream = clear(tmp_path / "clear100", image_size=8)
    assert [b.name for b in stream.buckets] == [str(b) for b in range(0, 11)]  # 11 updates, as Avalanche/Renate
    assert stream.info["skipped_labeled_buckets"] == []


@pytest.mark.parametrize("indices", [list(range(1, 11)), [str(b) for b in range(0, 11)], [3, 1, 2]],
                         ids=["1-10", "0-10 as strings", "a chosen order"])
def test_neurips2021_trains_the_buckets_bucket_indices_json_lists_in_its_order(tmp_path, indices):
    root = tmp_path / "clear10-public"
    write_neurips2021(root, per_class=1, indices=indices)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is skipped, so nothing is warned about
        stream = clear(root, image_size=8)
    assert [b.name for b in stream.buckets] == [str(int(b)) for b in indices]
    assert stream.info["skipped_labeled_buckets"] == []
    assert stream.info["bucket_list"] == str(root / "training_folder" / "bucket_indices.json")


def test_neurips2021_without_bucket_indices_skips_bucket_0_and_reports_it(tmp_path):
    root = tmp_path / "clear10-public"
    write_neurips2021(root, per_class=1, indices=None)
    with pytest.warns(UserWarning, match="bucket 0 is labelled"):
        stream = clear(root, image_size=8)
    assert [b.name for b in stream.buckets] == [str(b) for b in range(1, 11)]
    assert stream.info["skipped_labeled_buckets"] == [0] and stream.info["bucket_list"] is None
    assert stream.summary()["skipped_labeled_buckets"] == [0]  # in the report's stream section


def test_a_bucket_indices_json_that_is_not_a_list_is_refused(tmp_path):
    root = tmp_path / "clear10-public"
    write_neurips2021(root, per_class=1, indices={"buckets": [1]})
    with pytest.raises(ClearLayoutError, match="bucket_indices.json holds a dict, expected a list"):
        clear(root, image_size=8)
