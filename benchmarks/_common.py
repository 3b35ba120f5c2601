"""Helpers shared by the service studies (service_overhead.py, serving_latency.py): the machine
description, the BENCHMARKS.md section writer, the command line, a /metrics scrape, percentiles."""
from __future__ import annotations

import math
import os
import platform
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine() -> dict:
    import grpc
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": cpu, "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "grpc": grpc.__version__,
            "torch_threads_benchmark_process": torch.get_num_threads(), "executable": sys.executable}


def machine_line(info: dict, loads: list[float], extra: str = "") -> str:
    load = ""
    if loads:
        s = sorted(loads)
        load = (f"; 1-minute load average during the runs {s[0]:.1f}–{s[-1]:.1f} (median {s[len(s) // 2]:.1f}; "
                f"other jobs share the machine)")
    return (f"Machine: {info['nproc']} cores, {info['cpu_model']}, Python {info['python']}, torch {info['torch']}, "
            f"grpcio {info['grpc']}{extra}{load}.")


def write_markdown(path: Path, body: str, section: str) -> None:
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    block = f"{begin}\n{body}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def command_line(argv) -> str:
    exe = Path(sys.executable)
    exe = os.path.relpath(exe, ROOT) if str(exe).startswith(str(ROOT)) else "python"
    script = os.path.relpath(Path(sys.argv[0]).resolve(), ROOT)
    return " ".join([exe, script, *(sys.argv[1:] if argv is None else argv)])


def scrape(url: str) -> dict[str, float]:
    """Every sample of a Prometheus text page, as {'name{label="v",...}': value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    return out


def percentile(values, q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list; NaN for an empty one."""
    if not values:
        return math.nan
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def median(values) -> float:
    v = sorted(x for x in values if not (isinstance(x, float) and math.isnan(x)))
    if not v:
        return math.nan
    m = len(v) // 2
    return v[m] if len(v) % 2 else (v[m - 1] + v[m]) / 2
