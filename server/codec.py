"""Samples and labels off the wire: decoded, validated, and refused before anything is allocated
that the message itself does not already pay for.

Raw tensors must match the schema's shape and carry exactly prod(shape)·itemsize bytes; encoded
images are opened lazily, their declared size checked against the pixel limit, and only then
decoded (no decompression bombs). Every error is InvalidArgument naming the field.

A message's images are decoded in parallel when an executor is given and they are large enough
to pay for it (PARALLEL_MIN_IMAGE_BYTES on average): Pillow and torch let go of the GIL while they
decode and resize, a thread hand-off costs more than a small image's whole decode. The first bad
image in message order is the one reported, as when decoding in order.
"""
from __future__ import annotations

import functools
import io
import math
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import torch

from clstream_proto import continual_learner_pb2 as pb

from .errors import InvalidArgument

WIRE_DTYPES = {  # wire enum → (numpy dtype, divisor to float32; uint8 as the npz stream scales it)
    pb.DTYPE_UINT8: (np.dtype("u1"), 255.0),
    pb.DTYPE_FLOAT16: (np.dtype("<f2"), 1.0),
    pb.DTYPE_FLOAT32: (np.dtype("<f4"), 1.0),
}
TORCH_TO_WIRE = {torch.uint8: pb.DTYPE_UINT8, torch.float16: pb.DTYPE_FLOAT16, torch.float32: pb.DTYPE_FLOAT32}
IMAGE_FORMATS = ("JPEG", "PNG")
IMAGE_MODES = {1: "L", 3: "RGB"}
# Below this mean size per image, a thread hand-off costs more than the decode (benchmarks/image_decode.py,
# 2 cores: 8x8 PNGs 0.6x through two threads, 28 KiB photos 1.6-1.9x).
PARALLEL_MIN_IMAGE_BYTES = 16 * 1024


@dataclass(frozen=True)
class DecodeLimits:
    max_samples: int = 4096  # per message
    max_image_bytes: int = 16 * 1024 * 1024  # per encoded image
    max_image_pixels: int = 4096 * 4096  # declared width × height, checked before decoding
    max_message_pixels: int = 64 * 1024 * 1024  # declared pixels of all of a message's images, before decoding
    image_mean: tuple[float, ...] | None = None  # per channel, after scaling to [0, 1]
    image_std: tuple[float, ...] | None = None
    # "resize-crop": any channel count, shorter side resized and centre cropped, then mean/std above;
    # "imagenet": cl_engine's image-dataset transforms (CLEAR's): RGB, ImageNet normalisation, the
    # evaluation transform (resize, centre crop) or, for training batches, the training one (random
    # resized crop and flip) — so a served image stream is preprocessed as the in-process run does.
    image_transform: str = "resize-crop"


def decode_samples(samples: pb.Samples, field: str, input_shape: tuple[int, ...], limits: DecodeLimits,
                   train: bool = False, pool: Executor | None = None, keep_uint8: bool = False) -> torch.Tensor:
    """A float32 tensor [n, *input_shape] with finite values, 1 <= n <= limits.max_samples.
    `train` picks the training-time image transform where the transform has one, and keeps a uint8
    tensor uint8 (the learner stores samples as they arrived and scales them itself); `pool` may
    decode large images in parallel; `keep_uint8` keeps a uint8 tensor as it came for other uses too
    (held-out sets)."""
    kind = samples.WhichOneof("payload")
    if kind == "tensor":
        return decode_tensor(samples.tensor, f"{field}.tensor", input_shape, limits.max_samples, keep_uint8 or train)
    if kind == "images":
        return decode_images(samples.images, f"{field}.images", input_shape, limits, train, pool)
    raise InvalidArgument(field, "not set; expected `tensor` (raw samples) or `images` (JPEG/PNG files)")


def _count(n: int, field: str, max_samples: int) -> None:
    if n < 1:
        raise InvalidArgument(field, "empty batch; expected at least 1 sample")
    if n > max_samples:
        raise InvalidArgument(field, f"{n} samples; expected at most {max_samples} per message")


def decode_tensor(t: pb.Tensor, field: str, input_shape: tuple[int, ...], max_samples: int,
                  keep_uint8: bool = False) -> torch.Tensor:
    if t.dtype not in WIRE_DTYPES:
        raise InvalidArgument(f"{field}.dtype", f"got {pb.DType.Name(t.dtype) if t.dtype in pb.DType.values() else t.dtype}; "
                                                "expected DTYPE_UINT8, DTYPE_FLOAT16 or DTYPE_FLOAT32")
    shape = list(t.shape)
    expected = f"[n, {', '.join(map(str, input_shape))}]"
    if len(shape) != 1 + len(input_shape) or tuple(shape[1:]) != input_shape:
        raise InvalidArgument(f"{field}.shape", f"got {shape[:8]}{'…' if len(shape) > 8 else ''}; expected {expected}")
    _count(shape[0], f"{field}.shape[0]", max_samples)
    dtype, divisor = WIRE_DTYPES[t.dtype]
    count = shape[0]
    for d in input_shape:
        count *= d
    if len(t.data) != count * dtype.itemsize:
        raise InvalidArgument(f"{field}.data", f"{len(t.data)} bytes; expected {count * dtype.itemsize} "
                                               f"({shape} × {dtype.itemsize} bytes per {dtype.name})")
    if keep_uint8 and t.dtype == pb.DTYPE_UINT8:
        return torch.from_numpy(np.frombuffer(t.data, dtype=dtype).reshape(shape).copy())
    array = np.frombuffer(t.data, dtype=dtype).reshape(shape).astype(np.float32)
    if divisor != 1.0:
        array /= np.float32(divisor)
    x = torch.from_numpy(array)
    _finite(x, f"{field}.data")
    return x


def _finite(x: torch.Tensor, field: str) -> None:
    if math.isfinite(float(x.sum())):  # a finite sum: every value is finite (NaN and Inf propagate)
        return
    bad = ~torch.isfinite(x.reshape(len(x), -1)).all(dim=1)
    if bool(bad.any()):
        raise InvalidArgument(field, f"sample {int(bad.nonzero()[0])} contains NaN or Inf; expected finite values")


@functools.lru_cache(maxsize=4)
def _imagenet_transforms(size: int):
    from cl_engine.streams.images import image_transforms  # torchvision loads here, only if used

    return image_transforms(size)


def decode_images(images: pb.EncodedImages, field: str, input_shape: tuple[int, ...], limits: DecodeLimits,
                  train: bool = False, pool: Executor | None = None) -> torch.Tensor:
    return check_images(images, field, input_shape, limits).decode(train, pool)


def check_images(images: pb.EncodedImages, field: str, input_shape: tuple[int, ...], limits: DecodeLimits
                 ) -> "EncodedBatch":
    """A message's images checked as far as that costs no decoding: the schema takes images, their
    count, and the pixels their headers declare together (`max_message_pixels`); decoded later."""
    imagenet = limits.image_transform == "imagenet"
    if imagenet and (len(input_shape) != 3 or input_shape[0] != 3 or input_shape[1] != input_shape[2]):
        raise InvalidArgument(field, f"the model takes samples of shape {list(input_shape)}; the imagenet image "
                                     "transform makes [3, size, size]; send a `tensor` instead")
    if len(input_shape) != 3 or input_shape[0] not in IMAGE_MODES:
        raise InvalidArgument(field, f"the model takes samples of shape {list(input_shape)}; images need a schema "
                                     "input_shape of [1 or 3, height, width]; send a `tensor` instead")
    _count(len(images.images), f"{field}.images", limits.max_samples)
    _message_pixels(images.images, f"{field}.images", limits)
    return EncodedBatch(list(images.images), field, tuple(input_shape), limits)


@dataclass
class EncodedBatch:
    """Encoded images that passed `check_images`, to decode where they are used. A Train batch's are
    decoded where the batch is applied (the learner's thread or process), off the gRPC threads; there
    each image's own limits (bytes, declared pixels) are checked before it is decoded."""
    files: list[bytes]
    field: str
    input_shape: tuple[int, ...]
    limits: DecodeLimits

    def __len__(self) -> int:
        return len(self.files)

    def decode(self, train: bool = False, pool: Executor | None = None,
               device: torch.device | None = None) -> torch.Tensor:
        """float32 [n, *input_shape]; with the imagenet transform, for training (`train`), the images as
        the learner stores them: uint8 [n, 3, size, size], resized and centre cropped as cl_engine's image
        sets store theirs (ImageSet.stored), un-augmented: the learner normalises and augments them afresh
        at every use. On a CUDA `device` such JPEGs are decoded there, batched (nvJPEG)."""
        field, limits, files = self.field, self.limits, self.files
        imagenet = limits.image_transform == "imagenet"
        if imagenet and train:
            size = self.input_shape[1]
            if device is not None and device.type == "cuda" and all(f[:2] == JPEG_MAGIC for f in files):
                for i, data in enumerate(files):  # each image's limits, before any is decoded
                    open_image(data, f"{field}.images[{i}]", limits, None)
                x = decode_jpegs(files, size, device)
                if x is not None:
                    return x
            store = _stored_transform(size)

            def decode(i: int, data: bytes) -> torch.Tensor:
                return store(open_image(data, f"{field}.images[{i}]", limits, "RGB"))
        elif imagenet:
            evaluation = _imagenet_transforms(self.input_shape[1])[0]

            def decode(i: int, data: bytes) -> torch.Tensor:
                return evaluation(open_image(data, f"{field}.images[{i}]", limits, "RGB"))
        else:
            def decode(i: int, data: bytes) -> torch.Tensor:
                return decode_image(data, f"{field}.images[{i}]", self.input_shape, limits)
        if decodes_in_parallel(files, pool):
            x = torch.stack(list(pool.map(decode, range(len(files)), files)))  # raises the first failure in order
        else:
            x = torch.stack([decode(i, data) for i, data in enumerate(files)])
        if x.dtype == torch.uint8:
            return x
        if not imagenet:
            if limits.image_mean is not None:
                x -= torch.tensor(limits.image_mean, dtype=torch.float32).view(-1, 1, 1)
            if limits.image_std is not None:
                x /= torch.tensor(limits.image_std, dtype=torch.float32).view(-1, 1, 1)
        _finite(x, field)
        return x


JPEG_MAGIC = b"\xff\xd8"


@functools.lru_cache(maxsize=4)
def _stored_transform(size: int):
    from cl_engine.streams.images import stored_transform  # torchvision loads here, only if used

    return stored_transform(size)


def decode_jpegs(files: list[bytes], size: int, device: torch.device) -> torch.Tensor | None:
    """JPEGs decoded on `device` together (torchvision's decode_jpeg: nvJPEG on CUDA), RGB, shorter side
    resized to `size` (bilinear, antialiased, rounded) and centre cropped: uint8 [n, 3, size, size] on
    `device`, within a few levels of Pillow's pixels (the CPU path). None when any file does not decode
    there (the CPU path then names the bad one)."""
    import warnings

    from torchvision.transforms.v2 import functional as TF
    with warnings.catch_warnings():  # torchvision 0.29 announces its decoders' move to TorchCodec
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg

    try:
        images = decode_jpeg([torch.frombuffer(bytearray(f), dtype=torch.uint8) for f in files],
                             mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return None
    out = []
    for image in images:
        resized = TF.resize(image.float(), [size], antialias=True)
        out.append(TF.center_crop(resized, [size, size]).round_().clamp_(0, 255).to(torch.uint8))
    return torch.stack(out)


def decodes_in_parallel(files, pool: Executor | None) -> bool:
    """Whether `decode_images` hands these encoded files to `pool`: more than one, and large enough
    on average (PARALLEL_MIN_IMAGE_BYTES) to pay for the hand-off."""
    return pool is not None and len(files) > 1 and sum(map(len, files)) >= PARALLEL_MIN_IMAGE_BYTES * len(files)


def _message_pixels(files, field: str, limits: DecodeLimits) -> None:
    """The message's decoding cost, bounded before any image is decoded: the pixels its images' headers
    declare, together, at most `max_message_pixels` (each image's own checks come with its decoding)."""
    from PIL import Image

    total = 0
    for i, data in enumerate(files):
        try:
            w, h = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS).size  # the header only
        except Exception:  # not an image at all: open_image names what is wrong with it
            continue
        total += max(w, 0) * max(h, 0)
        if total > limits.max_message_pixels:
            raise InvalidArgument(field, f"images 0..{i} declare {total} pixels together; expected at most "
                                         f"{limits.max_message_pixels} per message (the server's max_message_pixels; "
                                         "refused before decoding): send fewer or smaller images per message")


def open_image(data: bytes, field: str, limits: DecodeLimits, mode: str | None):
    """One JPEG or PNG, its declared size checked before decoding, decoded and converted to `mode` as
    cl_engine's image sets convert theirs (None: only the checks, nothing decoded)."""
    from PIL import Image, UnidentifiedImageError

    from cl_engine.streams.images import converted

    if not data:
        raise InvalidArgument(field, "empty; expected a JPEG or PNG file")
    if len(data) > limits.max_image_bytes:
        raise InvalidArgument(field, f"{len(data)} bytes; expected at most {limits.max_image_bytes}")
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        w, h = image.size  # from the header; nothing is decoded yet
        if w < 1 or h < 1 or w * h > limits.max_image_pixels:
            raise InvalidArgument(field, f"declares {w}×{h} = {w * h} pixels; expected 1..{limits.max_image_pixels} "
                                         "(refused before decoding)")
        if mode is None:
            return image
        image.load()
        return converted(image, mode)
    except InvalidArgument:
        raise
    except Image.DecompressionBombError:
        raise InvalidArgument(field, f"declares more than {limits.max_image_pixels} pixels (refused before decoding)")
    except UnidentifiedImageError:  # its message names an in-memory buffer object, not the data
        raise InvalidArgument(field, f"not a JPEG or PNG file (it starts with {data[:8]!r}); expected a JPEG or PNG "
                                     "file")
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise InvalidArgument(field, f"could not be decoded as JPEG or PNG ({type(e).__name__}: {e})"[:300])


def decode_image(data: bytes, field: str, input_shape: tuple[int, ...], limits: DecodeLimits) -> torch.Tensor:
    """One JPEG or PNG as float32 [C, H, W] in [0, 1]: shorter side resized to fit, centre cropped."""
    from PIL import Image

    channels, height, width = input_shape
    image = open_image(data, field, limits, IMAGE_MODES[channels])
    w, h = image.size
    if (h, w) != (height, width):
        scale = max(height / h, width / w)
        rw, rh = max(width, round(w * scale)), max(height, round(h * scale))
        image = image.resize((rw, rh), Image.Resampling.BILINEAR)
        left, top = (rw - width) // 2, (rh - height) // 2
        image = image.crop((left, top, left + width, top + height))
    array = np.asarray(image, dtype=np.float32).reshape(height, width, channels) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def decode_labels(labels, field: str, n: int, num_classes: int) -> torch.Tensor:
    """int64 [n], each in 0..num_classes-1."""
    if len(labels) != n:
        raise InvalidArgument(field, f"{len(labels)} labels for {n} samples; expected one per sample")
    y = np.fromiter(labels, dtype=np.int64, count=n)
    bad = np.flatnonzero((y < 0) | (y >= num_classes))  # numpy: a few small ops cost less than torch's
    if len(bad):
        i = int(bad[0])
        raise InvalidArgument(field, f"label {int(y[i])} at position {i}; expected 0..{num_classes - 1}")
    return torch.from_numpy(y)


def encode_tensor(x: torch.Tensor | np.ndarray) -> pb.Tensor:
    """A wire tensor of x (uint8, float16 or float32; any other float is sent as float32)."""
    x = torch.as_tensor(x).detach().cpu()
    if x.dtype not in TORCH_TO_WIRE:
        x = x.float()
    array = x.contiguous().numpy()
    return pb.Tensor(shape=list(array.shape), dtype=TORCH_TO_WIRE[x.dtype],
                     data=array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())


def encode_samples(x: torch.Tensor | np.ndarray) -> pb.Samples:
    return pb.Samples(tensor=encode_tensor(x))
