"""Server-side image decoding: images per second in order against through the decode threads.

    python benchmarks/image_decode.py             # default: batches of 64, 7 repetitions, under a minute on 2 cores
    python benchmarks/image_decode.py --quick     # smoke test: 2 repetitions
    python benchmarks/image_decode.py --threads 4 # another pool size (default: the server's, CPU count up to 8)

Writes benchmarks/results/image_decode.json, prints a table and rewrites the `image_decode` section
of BENCHMARKS.md.

What a Train or Predict message of encoded images costs the server before the model sees it: the
server's own `server.codec.decode_images` on one message (the same function its handlers call),
once with no pool (in order, in the receiving thread) and once with a pool of `--threads` threads
as the server's `decode_threads` setting makes it, alternating, median of `--reps`. The inputs are
made here: photo-like JPEGs (400×300 RGB, smooth random content, quality 90, as CLEAR's Flickr
photos are) through each preprocessing the server offers at the sizes of the scale study, and the
8×8 grey PNG digits of the service benchmark. Images smaller than the parallel threshold
(server.codec.PARALLEL_MIN_IMAGE_BYTES on average) are decoded in order either way: the row says so;
one more row forces the digits through the threads, which is what the threshold avoids.
"""
from __future__ import annotations

import argparse
import io
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "proto")]  # this checkout, whatever the venv has installed

from benchmarks.common import (  # noqa: E402
    command_line, entry_point, machine, machine_line, median, write_markdown, write_results)
from clstream_proto import continual_learner_pb2 as pb  # noqa: E402
from server import codec  # noqa: E402
from server.codec import DecodeLimits, decode_images  # noqa: E402

SECTION = "image_decode"
MIN_MEASURED_SECONDS = 0.2  # each measurement repeats a call until it lasts about this long
# (name, source, schema input_shape, server image_transform, Train batch?, past the threshold whatever the size?)
CASES = [
    ("photo JPEG → 3×224×224, imagenet Train batch (stored uint8: resize, centre crop)", "photo", (3, 224, 224),
     "imagenet", True, False),
    ("photo JPEG → 3×224×224, imagenet evaluation transform", "photo", (3, 224, 224), "imagenet", False, False),
    ("photo JPEG → 3×64×64, resize-crop", "photo", (3, 64, 64), "resize-crop", False, False),
    ("photo JPEG → 3×32×32, resize-crop", "photo", (3, 32, 32), "resize-crop", False, False),
    ("8×8 grey PNG digit → 1×8×8 (service benchmark)", "digit", (1, 8, 8), "resize-crop", False, False),
    ("8×8 grey PNG digit → 1×8×8, forced through the threads (threshold 0)", "digit", (1, 8, 8), "resize-crop",
     False, True),
]


def photos(n: int, seed: int) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        coarse = (rng.random((24, 32, 3)) * 255).astype(np.uint8)
        image = Image.fromarray(coarse, "RGB").resize((400, 300), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def digits(n: int) -> list[bytes]:
    from benchmarks.service_overhead import png_bytes
    from cl_engine.streams.digits import load_digits_split

    return png_bytes(load_digits_split(0)[0][:n])


@contextmanager
def parallel_threshold(min_bytes: int):
    """The server's parallel-decode threshold set to `min_bytes` inside the block (0: every message)."""
    saved, codec.PARALLEL_MIN_IMAGE_BYTES = codec.PARALLEL_MIN_IMAGE_BYTES, min_bytes
    try:
        yield
    finally:
        codec.PARALLEL_MIN_IMAGE_BYTES = saved


def time_decode(images: pb.EncodedImages, shape, limits: DecodeLimits, train: bool, pool, calls: int = 1) -> float:
    """Seconds per decode_images call, over `calls` calls in a row."""
    t0 = time.perf_counter()
    for _ in range(calls):
        decode_images(images, "samples.images", shape, limits, train, pool)
    return (time.perf_counter() - t0) / calls


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64, help="images per message (the digits: 10, as the service stream)")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--threads", type=int, default=min(8, os.cpu_count() or 1), help="decode threads")
    p.add_argument("--quick", action="store_true", help="smoke test: 2 repetitions")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "image_decode.json")
    p.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md", help="'-' for none")
    args = p.parse_args(argv)
    reps = 2 if args.quick else args.reps
    torch.set_num_threads(1)  # as the server child runs (client.local_server)
    started = time.perf_counter()
    info = machine()
    sources = {"photo": photos(args.batch, 0), "digit": digits(10)}
    rows = []
    with ThreadPoolExecutor(args.threads, thread_name_prefix="bench-decode") as pool:
        for name, source, shape, transform, train, forced in CASES:
            images = pb.EncodedImages(images=sources[source])
            limits = DecodeLimits(max_image_bytes=16 * 1024 * 1024, image_transform=transform)
            with parallel_threshold(0 if forced else codec.PARALLEL_MIN_IMAGE_BYTES):
                parallel = codec.decodes_in_parallel(images.images, pool)
                warm = time_decode(images, shape, limits, train, pool)  # transforms built, threads started
                calls = max(1, math.ceil(MIN_MEASURED_SECONDS / warm))  # small messages: several calls a measurement
                times = {"in_order": [], "threads": []}
                for rep in range(reps):
                    for way in (("in_order", "threads") if rep % 2 == 0 else ("threads", "in_order")):
                        times[way].append(time_decode(images, shape, limits, train,
                                                      pool if way == "threads" else None, calls))
            n = len(images.images)
            mean_bytes = sum(map(len, images.images)) / n
            row = {"case": name, "images": n, "mean_bytes": mean_bytes, "input_shape": list(shape),
                   "transform": transform, "train": train, "parallel": parallel,
                   "calls_per_measurement": calls, "seconds_per_call": times,
                   "in_order_images_per_second": n / median(times["in_order"]),
                   "threads_images_per_second": n / median(times["threads"])}
            row["speedup"] = row["threads_images_per_second"] / row["in_order_images_per_second"]
            rows.append(row)
            print(f"{name}: {row['in_order_images_per_second']:.0f} → {row['threads_images_per_second']:.0f} "
                  f"images/s ({row['speedup']:.2f}x)", file=sys.stderr)
    out = {"study": SECTION, "command": command_line(argv), "machine": info, "threads": args.threads,
           "reps": reps, "parallel_min_image_bytes": codec.PARALLEL_MIN_IMAGE_BYTES, "rows": rows,
           "wall_seconds": time.perf_counter() - started}
    write_results(out, args.out)
    publish(out, args.out, None if str(args.markdown) == "-" else args.markdown)
    return 0


def markdown(out: dict) -> str:
    lines = [
        "### Server-side image decoding (`benchmarks/image_decode.py`, behind issue 7 study 3's image samples)",
        "",
        f"Machine: {machine_line(out['machine'])}.",
        "",
        f"Command: `{out['command']}` ({out['wall_seconds']:.0f} s)",
        "",
        f"One message through `server.codec.decode_images`, in order against a pool of {out['threads']} decode "
        f"threads (the server's `decode_threads`), alternating, median of {out['reps']} measurements of at least "
        f"{MIN_MEASURED_SECONDS} s each.",
        "",
        "| images | per message | bytes each (mean) | through the threads? | images/s in order "
        "| images/s with threads | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in out["rows"]:
        lines.append(f"| {r['case']} | {r['images']} | {r['mean_bytes'] / 1024:.1f} KiB | "
                     f"{'yes' if r['parallel'] else 'no (below the threshold)'} | "
                     f"{r['in_order_images_per_second']:.0f} | {r['threads_images_per_second']:.0f} | "
                     + (f"**{r['speedup']:.2f}** |" if r["parallel"] else
                        f"{r['speedup']:.2f} (one code path both ways: the machine's noise) |"))
    lines += ["", f"The threshold: {out['parallel_min_image_bytes'] // 1024} KiB per image on average "
              "(server.codec.PARALLEL_MIN_IMAGE_BYTES); below it a thread hand-off costs more than the decode "
              "(the forced row). "
              "On this machine the threads share 2 cores with nothing else of the server running; a server that "
              "trains at the same time has one core fewer to give them."]
    return "\n".join(lines)


def publish(out: dict, path: Path, markdown_path: Path | None) -> None:
    text = markdown(out)
    print(text)
    if markdown_path is not None:
        write_markdown(markdown_path, text, SECTION)


if __name__ == "__main__":
    sys.exit(entry_point(main, publish, SECTION))
