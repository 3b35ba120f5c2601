"""The report as pictures (matplotlib, Agg backend: no display needed). Each figure is drawn from
the JSON report alone, so a recorded report.json can be drawn again later
(`clstream-client figures report.json`).

- accuracy_matrix.png: R[i][j] as a heatmap, with the row before training on top.
- accuracy_over_time.png: prequential accuracy (each batch, scored before the model learns it),
  served accuracy (predictions on data not trained yet) and the held-out accuracy after each
  bucket, against samples trained, with the bucket boundaries.
- buffer_composition.png: what the replay (or GEM's episodic) memory holds after each bucket, by bucket of
  origin.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

DPI = 110


def _nan(values) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in values], dtype=float)


def _short(name: str, limit: int = 14) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _title(report: dict) -> str:
    stream = report["stream"]["name"]
    config = report.get("config", {})
    return f"{stream} · {report.get('strategy')} · {config.get('model', '')}".strip(" ·")


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _memory_name(report: dict) -> str:
    """GEM and A-GEM keep an episodic memory per bucket (a constraint); replay a replay memory."""
    return "episodic memory" if report.get("strategy") in ("gem", "agem") else "replay memory"


def accuracy_matrix(report: dict, path: Path) -> Path:
    return _save(matrix_figure(report), path)


def matrix_figure(report: dict):
    R = [_nan(row) for row in report["accuracy_matrix"]]
    init = _nan(report["initial_accuracy"])
    n = max([len(init)] + [len(r) for r in R])
    M = np.full((len(R) + 1, n), math.nan)
    M[0, : len(init)] = init
    for i, row in enumerate(R):
        M[i + 1, : len(row)] = row
    side = max(4.2, 0.62 * n + 2.2)
    fig, ax = plt.subplots(figsize=(side + 1.0, 0.55 * (len(R) + 1) + 2.0))
    image = ax.imshow(np.ma.masked_invalid(M), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(M.shape[0]):
        for j in range(n):
            if not math.isnan(M[i, j]):
                ax.text(j, i, f"{100 * M[i, j]:.0f}", ha="center", va="center", fontsize=9 if n <= 12 else 7,
                        color="black" if M[i, j] > 0.6 else "white")
    names = report.get("bucket_names") or [str(j) for j in range(n)]
    ax.set_xticks(range(n), [f"{j}\n{_short(names[j])}" if j < len(names) and names[j] != str(j) else str(j)
                             for j in range(n)], fontsize=8)
    ax.set_yticks(range(M.shape[0]), ["before"] + [f"after {i}" for i in range(len(R))], fontsize=8)
    ax.set_xlabel("held-out set of bucket j")
    ax.set_ylabel("trained through bucket i")
    m = report["metrics"]
    parts = [f"{label} {100 * m[k]:.1f}" for k, label in (("acc", "ACC"), ("bwt", "BWT"), ("fwt", "FWT"))
             if m.get(k) is not None]
    ax.set_title(f"accuracy matrix (%) — {_title(report)}\n" + "  ".join(parts), fontsize=10)
    bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="accuracy (%)")
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.0f}"))  # percent, as the cells
    fig.tight_layout()
    return fig


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    valid = np.convolve(~np.isnan(values), kernel, mode="valid")
    total = np.convolve(np.nan_to_num(values), kernel, mode="valid")
    out = np.full_like(values, math.nan)
    out[window - 1:] = np.where(valid > 0, total / np.maximum(valid, 1e-12), math.nan)
    return out


def accuracy_over_time(report: dict, path: Path) -> Path:
    return _save(over_time_figure(report), path)


def over_time_figure(report: dict):
    timeline = report["timeline"]
    acks, queries = timeline["acks"], timeline["queries"]
    fig, ax = plt.subplots(figsize=(9.0, 4.8))
    x = np.array(acks["samples_trained"], dtype=float)
    y = _nan(acks["accuracy"])
    if len(x):
        window = max(1, min(50, len(x) // 40))
        ax.plot(x, y, color="tab:blue", alpha=0.15, linewidth=0.8)
        ax.plot(x, _smooth(y, window), color="tab:blue", linewidth=1.6,
                label=f"prequential (batch scored before training; mean of {window})")
    if queries["position"]:
        ax.plot(queries["position"], _nan(queries["accuracy"]), "o-", color="tab:orange", markersize=3,
                linewidth=1.0, alpha=0.9, label="served (predictions on untrained data)")
    ends = timeline["bucket_ends"]
    names = report.get("bucket_names") or []
    for e in ends:
        ax.axvline(e["samples"], color="grey", linestyle="--", linewidth=0.8)
    if ends:
        seen = [np.nanmean(_nan(e["row"][: e["bucket"] + 1])) for e in ends]
        ax.plot([e["samples"] for e in ends], seen, "s", color="tab:green", markersize=6,
                label="held-out, buckets seen so far")
    # Bucket labels at the top, between boundaries.
    bounds = [0] + [e["samples"] for e in ends]
    for i in range(len(bounds) - 1):
        b = ends[i]["bucket"]
        label = _short(names[b], 12) if b < len(names) else str(b)
        ax.text((bounds[i] + bounds[i + 1]) / 2, 1.02, label, ha="center", va="bottom", fontsize=7, color="dimgrey",
                transform=ax.get_xaxis_transform())
    ax.set_ylim(0, 1.0)
    right = max([1.0, *x, *queries["position"], *(e["samples"] for e in ends)])
    ax.set_xlim(-0.02 * right, 1.02 * right)  # a point at 0 samples (a query before training) off the y-axis
    ax.set_xlabel("samples trained")
    ax.set_ylabel("accuracy")
    ax.set_title(f"learning over time — {_title(report)}", fontsize=10, pad=16)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.88, bottom=0.2)
    return fig


def buffer_composition(report: dict, path: Path) -> Path:
    return _save(buffer_figure(report), path)


def buffer_figure(report: dict):
    ends = report["timeline"]["bucket_ends"]
    n = report["stream"]["buckets"]
    memory = _memory_name(report)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(ends) + 4.5), 4.0))
    if not ends or not any(e["buffer_size"] for e in ends):
        ax.text(0.5, 0.5, f"the {memory} stayed empty\n(strategy {report.get('strategy')})", ha="center",
                va="center", transform=ax.transAxes)
        ax.set_axis_off()
    else:
        colors = plt.get_cmap("tab10" if n <= 10 else "tab20")
        bottom = np.zeros(len(ends))
        xs = np.arange(len(ends))
        for origin in range(n):
            heights = np.array([e["buffer_by_bucket"].get(str(origin), e["buffer_by_bucket"].get(origin, 0))
                                for e in ends], dtype=float)
            if heights.any():
                ax.bar(xs, heights, bottom=bottom, color=colors(origin % colors.N), label=f"from bucket {origin}")
                bottom += heights
        capacity = report["buffer"].get("capacity")
        if capacity and memory == "replay memory":  # GEM's memory is bounded per bucket, not by this
            ax.axhline(capacity, color="black", linestyle=":", linewidth=1.2, zorder=3, label=f"capacity {capacity}")
        ax.set_xticks(xs, [f"after {e['bucket']}" for e in ends], fontsize=8)
        ax.set_xlabel("end of bucket (after training through it)")
        ax.set_ylabel("samples in memory")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=2 if n > 12 else 1)
    ax.set_title(f"{memory} by bucket of origin\n{_title(report)}", fontsize=10)
    fig.tight_layout()
    return fig


FIGURES = {"accuracy_matrix.png": accuracy_matrix, "accuracy_over_time.png": accuracy_over_time,
           "buffer_composition.png": buffer_composition}


def check_report(report, source: str = "the report") -> None:
    """ValueError, before any figure is written, when `report` is not one the figures can be drawn from."""
    expected = "expected the report.json of clstream-client stream or demo"
    if not isinstance(report, dict):
        raise ValueError(f"{source} holds a JSON {type(report).__name__}; {expected}")
    if "timeline" not in report and "accuracy_matrix" in report:
        raise ValueError(f"{source} has no timeline, as a report of `python -m cl_engine run` has not; {expected}")
    missing = [k for k in ("stream", "strategy", "accuracy_matrix", "initial_accuracy", "metrics", "buffer",
                           "timeline") if k not in report]
    if missing or not isinstance(report["timeline"], dict) or \
            any(k not in report["timeline"] for k in ("acks", "queries", "bucket_ends")):
        raise ValueError(f"{source} lacks {', '.join(missing) or 'parts of its timeline'}; {expected}")


def draw_all(report: dict, directory: str | Path, source: str = "the report") -> list[Path]:
    """Every figure of a JSON-ready report into `directory`; returns the paths."""
    check_report(report, source)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return [draw(report, directory / name) for name, draw in FIGURES.items()]
