"""Samples and labels off the wire: exact decoding, and every malformed input refused by field name."""
from __future__ import annotations

import io
import struct
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from clstream_proto import continual_learner_pb2 as pb
from server.codec import (PARALLEL_MIN_IMAGE_BYTES, DecodeLimits, decode_images, decode_labels, decode_samples,
                          decode_tensor, encode_tensor)
from server.errors import InvalidArgument

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the cuda helpers
from cuda_helpers import DEVICE  # noqa: E402

SHAPE = (1, 8, 8)
LIMITS = DecodeLimits(max_samples=64, max_image_bytes=100_000, max_image_pixels=256 * 256)


def png_bytes(array: np.ndarray, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width × height grey pixels (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.uint8])
def test_tensor_round_trip(dtype):
    x = torch.rand(5, *SHAPE)
    sent = (x * 255).round().to(torch.uint8) if dtype == torch.uint8 else x.to(dtype)
    got = decode_tensor(encode_tensor(sent), "samples.tensor", SHAPE, 64)
    assert got.dtype == torch.float32 and got.shape == (5, *SHAPE)
    expected = sent.float() / 255 if dtype == torch.uint8 else sent.float()
    assert torch.equal(got, expected)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.sampled_from([torch.float32, torch.float16]), st.integers(0, 2**31))
def test_float_tensors_decode_bit_for_bit(n, dtype, seed):
    x = torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed)).to(dtype)
    assert torch.equal(decode_tensor(encode_tensor(x), "t", SHAPE, 64), x.float())


def tensor(shape, dtype=pb.DTYPE_FLOAT32, data=None, itemsize=4):
    count = int(np.prod(shape)) if shape else 0
    return pb.Tensor(shape=shape, dtype=dtype, data=b"\0" * (count * itemsize) if data is None else data)


@pytest.mark.parametrize("message,field,words", [
    (tensor([2, 1, 8, 9]), "samples.tensor.shape", "expected [n, 1, 8, 8]"),
    (tensor([2, 64]), "samples.tensor.shape", "expected [n, 1, 8, 8]"),
    (tensor([]), "samples.tensor.shape", "expected [n, 1, 8, 8]"),
    (tensor([0, 1, 8, 8]), "samples.tensor.shape[0]", "at least 1 sample"),
    (tensor([65, 1, 8, 8]), "samples.tensor.shape[0]", "at most 64"),
    (tensor([2, 1, 8, 8], dtype=pb.DTYPE_UNSPECIFIED), "samples.tensor.dtype", "DTYPE_FLOAT32"),
    (tensor([2, 1, 8, 8], dtype=77), "samples.tensor.dtype", "got 77"),
    (tensor([2, 1, 8, 8], data=b"\0" * 511), "samples.tensor.data", "expected 512"),
    (tensor([2**40, 1, 8, 8], data=b"\0" * 16), "samples.tensor.shape[0]", "at most 64"),
    (tensor([2, 1, 8, 8], dtype=pb.DTYPE_FLOAT16, itemsize=4), "samples.tensor.data", "expected 256"),
])
def test_malformed_tensors_name_the_field(message, field, words):
    with pytest.raises(InvalidArgument) as e:
        decode_samples(pb.Samples(tensor=message), "samples", SHAPE, LIMITS)
    assert e.value.field == field and words in e.value.message


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_non_finite_values_are_refused(bad, dtype):
    x = torch.zeros(3, *SHAPE)
    x[1, 0, 2, 3] = bad
    with pytest.raises(InvalidArgument) as e:
        decode_samples(pb.Samples(tensor=encode_tensor(x.to(dtype))), "samples", SHAPE, LIMITS)
    assert e.value.field == "samples.tensor.data" and "sample 1" in e.value.message


def test_large_finite_values_whose_sum_overflows_are_accepted():
    x = torch.full((3, *SHAPE), 3e38)  # every value finite, their float32 sum is not
    assert not torch.isfinite(x.sum())
    assert torch.equal(decode_samples(pb.Samples(tensor=encode_tensor(x)), "samples", SHAPE, LIMITS), x)


def test_samples_must_be_set():
    with pytest.raises(InvalidArgument) as e:
        decode_samples(pb.Samples(), "samples", SHAPE, LIMITS)
    assert e.value.field == "samples"


def test_labels():
    assert decode_labels([0, 9, 3], "labels", 3, 10).tolist() == [0, 9, 3]
    for labels, n, words in [([1, 2], 3, "2 labels for 3 samples"), ([0, 10, 1], 3, "label 10 at position 1"),
                             ([-1], 1, "label -1"), ([2**62], 1, "expected 0..9")]:
        with pytest.raises(InvalidArgument) as e:
            decode_labels(labels, "labels", n, 10)
        assert e.value.field == "labels" and words in e.value.message


def test_png_and_jpeg_images_decode_to_the_schema():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    x = decode_images(pb.EncodedImages(images=[png_bytes(grey)]), "samples.images", SHAPE, LIMITS)
    assert x.shape == (1, 1, 8, 8) and torch.equal(x[0, 0], torch.from_numpy(grey).float() / 255)
    # A larger RGB JPEG is converted to grey, its shorter side resized and the centre cropped.
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (20, 40, 3), dtype=np.uint8), "RGB").save(buf, format="JPEG")
    x = decode_images(pb.EncodedImages(images=[buf.getvalue()]), "samples.images", SHAPE, LIMITS)
    assert x.shape == (1, 1, 8, 8) and 0 <= float(x.min()) and float(x.max()) <= 1
    rgb = decode_images(pb.EncodedImages(images=[buf.getvalue()]), "samples.images", (3, 16, 16),
                        DecodeLimits(image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.25, 0.25)))
    assert rgb.shape == (1, 3, 16, 16) and float(rgb.min()) >= -2 and float(rgb.max()) <= 2


@pytest.mark.parametrize("data,words", [
    (b"", "empty"),
    (b"definitely not an image", "not a JPEG or PNG file (it starts with b'definite'); expected a JPEG or PNG file"),
    (b"GIF89a" + b"\0" * 64, "not a JPEG or PNG file (it starts with b'GIF89a\\x00\\x00')"),
    (None, "could not be decoded"),  # a truncated PNG
    (b"\0" * 100_001, "at most 100000"),
])
def test_bad_images_are_refused(data, words):
    if data is None:
        whole = png_bytes(np.random.default_rng(1).integers(0, 256, (8, 8), dtype=np.uint8))
        data = whole[: len(whole) // 2]
    with pytest.raises(InvalidArgument) as e:
        decode_images(pb.EncodedImages(images=[png_bytes(np.zeros((8, 8), np.uint8)), data]), "samples.images",
                      SHAPE, LIMITS)
    assert e.value.field == "samples.images.images[1]" and words in e.value.message


@pytest.mark.parametrize("size", [(257, 256), (5000, 5000), (50_000, 50_000), (2**31 - 1, 2**31 - 1)])
def test_decompression_bombs_are_refused_before_decoding(monkeypatch, size):
    from PIL import ImageFile

    def no_decoding(self):
        raise AssertionError("decoded an image that should have been refused from its header")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(InvalidArgument) as e:
        decode_images(pb.EncodedImages(images=[png_declaring(*size)]), "samples.images", SHAPE, LIMITS)
    assert "pixels" in e.value.message and e.value.field == "samples.images.images[0]"


def test_images_need_an_image_schema():
    with pytest.raises(InvalidArgument) as e:
        decode_images(pb.EncodedImages(images=[png_bytes(np.zeros((8, 8), np.uint8))]), "samples.images", (64,),
                      LIMITS)
    assert "send a `tensor`" in e.value.message


def test_the_imagenet_transform_is_the_engines():
    """With image_transform=imagenet, served images are preprocessed exactly as cl_engine's image
    streams (CLEAR) preprocess theirs: the evaluation transform, or the training one for Train."""
    from cl_engine.streams.images import image_transforms, stored_transform

    rng = np.random.default_rng(3)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8), "RGB").save(buf, format="PNG")
    limits = DecodeLimits(image_transform="imagenet")
    images = pb.EncodedImages(images=[buf.getvalue()])
    evaluation, _ = image_transforms(32)
    expected = evaluation(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    assert torch.equal(decode_images(images, "samples.images", (3, 32, 32), limits)[0], expected)
    trained = decode_images(images, "samples.images", (3, 32, 32), limits, train=True)  # as the learner stores it
    assert torch.equal(trained[0], stored_transform(32)(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    with pytest.raises(InvalidArgument, match="3, size, size"):
        decode_images(images, "samples.images", (1, 32, 32), limits)


def noise_png(size: int, seed: int, channels: int = 1) -> bytes:
    """A PNG of random pixels: it does not compress, so it is about size² · channels bytes."""
    shape = (size, size) if channels == 1 else (size, size, channels)
    return png_bytes(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8),
                     "L" if channels == 1 else "RGB")


class CountingPool(ThreadPoolExecutor):
    def __init__(self):
        super().__init__(2)
        self.submitted = 0

    def submit(self, *args, **kwargs):
        self.submitted += 1
        return super().submit(*args, **kwargs)


BIG = DecodeLimits(max_samples=64, max_image_bytes=1_000_000, max_image_pixels=512 * 512)


def test_large_images_decode_in_parallel_to_the_same_tensor():
    grey = pb.EncodedImages(images=[noise_png(160, seed) for seed in range(6)])
    rgb = pb.EncodedImages(images=[noise_png(96, seed, channels=3) for seed in range(4)])
    assert min(len(f) for f in [*grey.images, *rgb.images]) >= PARALLEL_MIN_IMAGE_BYTES
    imagenet = DecodeLimits(max_image_bytes=1_000_000, image_transform="imagenet")
    with CountingPool() as pool:
        parallel = decode_images(grey, "samples.images", (1, 32, 32), BIG, pool=pool)
        assert pool.submitted == 6
        parallel_rgb = decode_images(rgb, "samples.images", (3, 32, 32), imagenet, pool=pool)
        assert pool.submitted == 10
        small = pb.EncodedImages(images=[png_bytes(np.zeros((8, 8), np.uint8))] * 6)
        decode_images(small, "samples.images", SHAPE, BIG, pool=pool)
        assert pool.submitted == 10  # small images are decoded in order, in the calling thread
    assert torch.equal(parallel, decode_images(grey, "samples.images", (1, 32, 32), BIG))
    assert torch.equal(parallel_rgb, decode_images(rgb, "samples.images", (3, 32, 32), imagenet))


def test_in_parallel_the_first_bad_image_in_message_order_is_reported():
    """Image 1 is truncated (fails late, while decoding), image 3 is garbage (fails at once): the
    error names image 1, as decoding in order would."""
    files = [noise_png(160, 0), noise_png(160, 1)[:20_000], noise_png(160, 2), b"not an image" * 3000]
    with CountingPool() as pool, pytest.raises(InvalidArgument) as e:
        decode_images(pb.EncodedImages(images=files), "samples.images", (1, 32, 32), BIG, pool=pool)
    assert pool.submitted == 4
    assert e.value.field == "samples.images.images[1]" and "could not be decoded" in e.value.message


def photo_jpegs(n: int = 3) -> list[bytes]:
    rng = np.random.default_rng(5)
    files = []
    for k in range(n):
        smooth = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(smooth).resize((80 + 8 * k, 60), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=92)
        files.append(buf.getvalue())
    return files


def check_batched_jpeg_decode(device: torch.device) -> None:
    """torchvision's batched decode_jpeg path gives Pillow's stored pixels within a few levels, on `device`."""
    from server.codec import decode_jpegs

    files = photo_jpegs()
    limits = DecodeLimits(image_transform="imagenet")
    pil = decode_images(pb.EncodedImages(images=files), "samples.images", (3, 24, 24), limits, train=True)
    batched = decode_jpegs(files, 24, device)
    assert batched.dtype == torch.uint8 and batched.device.type == device.type and batched.shape == pil.shape
    assert (batched.cpu().int() - pil.int()).abs().float().mean() < 3  # nvJPEG/libjpeg-turbo and resize rounding
    assert decode_jpegs([b"\xff\xd8 not a jpeg"], 24, device) is None  # the Pillow path then names it


def test_the_batched_jpeg_decode_matches_pillow_on_the_cpu():
    check_batched_jpeg_decode(torch.device("cpu"))


@pytest.mark.cuda
def test_train_jpegs_are_decoded_on_the_cuda_device_batched():
    check_batched_jpeg_decode(torch.device(DEVICE))
    from server.codec import check_images

    files = photo_jpegs()
    batch = check_images(pb.EncodedImages(images=files), "samples.images", (3, 24, 24),
                         DecodeLimits(image_transform="imagenet"))
    x = batch.decode(train=True, device=torch.device(DEVICE))
    assert x.device.type == torch.device(DEVICE).type and x.dtype == torch.uint8 and x.shape == (3, 3, 24, 24)
