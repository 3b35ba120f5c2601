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


# -- a study script's scaffolding: its parser and output flags, its results, its section's head -------------

QUICK_RUN = " — QUICK run, not a result"  # the marks of a --quick run in a section's command line
QUICK_SETTINGS = " — **quick settings, a smoke test**"


def study_parser(doc: str) -> argparse.ArgumentParser:
    """A study script's parser, described by its docstring's first paragraph (kept as written)."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)


def output_flags(p: argparse.ArgumentParser, study: str) -> None:
    """Where a study's results go: --out (benchmarks/results/STUDY.json) and --markdown (BENCHMARKS.md, '-' for
    none)."""
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / f"{study}.json")
    p.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md", help="'-' for none")


def stream_flags(p: argparse.ArgumentParser, buckets: int, reps: int) -> None:
    """A service study's stream (--dataset, --buckets, --samples-per-bucket) and its --reps; `stream_of` builds it."""
    p.add_argument("--dataset", default="digits-rotated")
    p.add_argument("--buckets", type=int, default=buckets)
    p.add_argument("--samples-per-bucket", type=int, default=None)
    p.add_argument("--reps", type=int, default=reps)


def stream_of(args: argparse.Namespace):
    """The stream `stream_flags` describe."""
    from cl_engine import StreamOptions, build_stream

    return build_stream(args.dataset, StreamOptions(num_buckets=args.buckets, samples_per_bucket=args.samples_per_bucket))


def study_results(study: str, argv, info: dict, args: argparse.Namespace, started: float, **data) -> dict:
    """A study's results: what it is, the command, the machine `info`, its settings (the parsed flags), `data`, and
    its length from `started` (a time.perf_counter())."""
    return {"study": study, "command": command_line(argv), "machine": info,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            **data, "wall_seconds": time.perf_counter() - started}


def section_head(title: str, out: dict, loads: list[float] | None = None, extra: str = "",
                 quick: str = QUICK_RUN) -> list[str]:
    """The first lines of a study's BENCHMARKS.md section: its title, the machine (`loads` and `extra` as for
    machine_line), the command and its length, marked with `quick` when its settings say it was a smoke test."""
    mark = quick if out.get("settings", {}).get("quick") else ""
    return [title, "", "Machine: " + machine_line(out["machine"], loads, extra) + ".", "",
            f"Command: `{out['command']}` ({out['wall_seconds'] / 60:.1f} min){mark}", ""]


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A markdown table: the header's cells, a rule, then each row's cells (as str(); an empty one as `| |`)."""
    def line(cells) -> str:
        return "|" + "".join(f" {c} |" if str(c) else " |" for c in cells)

    return "\n".join([line(header), "|" + "---|" * len(header), *map(line, rows)])
