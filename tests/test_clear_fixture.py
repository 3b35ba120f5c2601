"""cl_engine.streams.clear_fixture: the one writer of CLEAR-layout JPEG folders (tests, benchmarks, the device
check), read back through the CLEAR loader in either release's layout."""
from __future__ import annotations

import hashlib

import pytest
from PIL import Image

from cl_engine import StreamOptions, build_stream
from cl_engine.streams.clear_fixture import write_clear_fixture

CLASSES = ("BACKGROUND", "bus", "camera")
SIZES = ((48, 36), (36, 48))


def digest(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("release", ["current", "neurips2021"])
def test_either_release_reads_back_as_written(tmp_path, release):
    said = write_clear_fixture(tmp_path / "clear", buckets=3, classes=CLASSES, per_class=4, sizes=SIZES,
                               release=release, grayscale=1)
    assert said["images"] == 3 * 3 * 4 and said["release"] == release and said["jpeg_bytes_total"] > 0
    stream = build_stream(f"clear:{tmp_path / 'clear'}", StreamOptions(image_size=8))
    assert stream.class_names == list(CLASSES) and stream.info["release"] == release
    assert [b.name for b in stream.buckets] == ["1", "2", "3"] and [len(b.train) for b in stream.buckets] == [12] * 3
    assert stream.info["samples_without_upload_time"] == 0 and not stream.info["skipped"].get("examples")
    images = sorted((tmp_path / "clear").rglob("*.jpg"))
    modes, sizes = set(), set()
    for path in images:
        with Image.open(path) as image:
            assert image.format == "JPEG"
            modes.add(image.mode)
            sizes.add(image.size)
    assert modes == {"RGB", "L"} and sizes == set(SIZES)
    grey = [p for p in images if Image.open(p).mode == "L"]
    assert len(grey) == 3 * 3  # the first image of each class in each bucket


def test_worker_processes_write_the_same_bytes(tmp_path):
    one = write_clear_fixture(tmp_path / "one", buckets=2, classes=CLASSES, per_class=3, sizes=SIZES, seed=5)
    two = write_clear_fixture(tmp_path / "two", buckets=2, classes=CLASSES, per_class=3, sizes=SIZES, seed=5,
                              workers=2)
    assert digest(tmp_path / "one") == digest(tmp_path / "two")
    assert one == two
    other = write_clear_fixture(tmp_path / "other", buckets=2, classes=CLASSES, per_class=3, sizes=SIZES, seed=6)
    assert digest(tmp_path / "other") != digest(tmp_path / "one")
    assert other["images"] == one["images"]


def test_an_unknown_release_is_refused(tmp_path):
    with pytest.raises(ValueError, match="release must be one of current, neurips2021, got 'v3'"):
        write_clear_fixture(tmp_path / "clear", release="v3")
