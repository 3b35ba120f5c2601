"""What every study script shares: the machine it ran on, its command line, the BENCHMARKS.md
section it rewrites, medians and percentiles, a /metrics scrape, and a timer that reads both wall
and thread-CPU seconds."""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine() -> dict:
    import numpy as np
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"nproc": os.cpu_count(), "cpu_model": cpu, "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "numpy": np.__version__, "executable": sys.executable,
            "loadavg_1min_at_start": os.getloadavg()[0], "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    try:
        import grpc
        info["grpc"] = grpc.__version__
    except ImportError:
        pass
    return info


def machine_line(info: dict, loads: list[float] | None = None, extra: str = "") -> str:
    """One line for BENCHMARKS.md; `loads`: 1-minute load averages sampled during the runs."""
    gpu = f"; CUDA device {info['cuda_device']}" if info.get("cuda_device") else "; no CUDA device"
    grpc = f", grpcio {info['grpc']}" if info.get("grpc") else ""
    if loads:
        s = sorted(loads)
        load = (f"; 1-minute load average during the runs {s[0]:.1f}–{s[-1]:.1f} (median {s[len(s) // 2]:.1f}; "
                f"other jobs share the machine)")
    else:
        start = info.get("loadavg_1min_at_start")
        load = f"; 1-minute load average {start:.1f} at the start (other jobs on the machine)" if start is not None else ""
    return (f"{info['nproc']} cores, {info['cpu_model']}, Python {info['python']}, torch {info['torch']} "
            f"({info.get('torch_threads', '?')} torch thread(s)){grpc}{gpu}{extra}{load}")


def command_line(argv) -> str:
    exe = Path(sys.executable)
    exe = os.path.relpath(exe, ROOT) if str(exe).startswith(str(ROOT)) else exe.name
    script = os.path.relpath(Path(sys.argv[0]).resolve(), ROOT)
    return " ".join([str(exe), script, *(sys.argv[1:] if argv is None else argv)])


def write_results(out: dict, path: Path) -> None:
    """The study's JSON at `path` (folders made as needed); says so on stderr with the run's length."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {path} ({out['wall_seconds']:.0f}s)", file=sys.stderr)


def write_markdown(path: Path, body: str, section: str) -> None:
    """Replace the text between `<!-- section:begin -->` and `<!-- section:end -->` (append if absent);
    says so on stderr."""
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    block = f"{begin}\n{body}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
    print(f"updated {path}", file=sys.stderr)


def median(values):
    values = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else math.nan


def percentile(values, q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a list; NaN for an empty one."""
    if not values:
        return math.nan
    s = sorted(values)
    return s[max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))]


def scrape(url: str) -> dict[str, float]:
    """Every sample of a Prometheus text page, as {'name{label="v",...}': value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return out


def timed(fn, steps: int, sync=None) -> tuple[float, float]:
    """(wall, thread-CPU) seconds per call of fn over `steps` calls."""
    if sync:
        sync()
    w0, c0 = time.perf_counter(), time.thread_time()
    for _ in range(steps):
        fn()
    if sync:
        sync()
    return (time.perf_counter() - w0) / steps, (time.thread_time() - c0) / steps


def entry_point(main, publish, study: str, argv: list[str] | None = None) -> int:
    """`script.py [flags]` runs the study; `script.py render RESULTS.json [--markdown FILE]` only
    rebuilds its BENCHMARKS.md section from a results file, with `publish(results, path, markdown)`."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["render"]:
        return main()
    p = argparse.ArgumentParser(description=f"re-render a {study} results JSON")
    p.add_argument("results", type=Path)
    p.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md")
    args = p.parse_args(argv[1:])
    publish(json.loads(args.results.read_text()), args.results, args.markdown)
    return 0
