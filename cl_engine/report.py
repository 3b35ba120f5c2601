"""The run report: one JSON document (NaN written as null), and the same numbers as a text table."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .metrics import METRIC_KEYS


def jsonable(value):
    """Floats that are NaN become None; numpy and torch scalars and arrays become plain lists."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_json(path: str | Path, report: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(jsonable(report), indent=2, allow_nan=False) + "\n")
    tmp.replace(path)
    return path


def _pct(v) -> str:
    return "   -  " if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:6.2f}"


def format_table(report: dict) -> str:
    """The accuracy matrix (rows: trained through bucket i; columns: held-out bucket j) and metrics, in %."""
    R = report["accuracy_matrix"]
    n = max([len(r) for r in R] + [len(report["initial_accuracy"])])
    lines = ["accuracy matrix (%): row i = after training through bucket i, column j = test on bucket j",
             "          " + "".join(f"{j:>7}" for j in range(n)),
             "  init    " + "".join(f" {_pct(v)}" for v in report["initial_accuracy"])]
    for i, row in enumerate(R):
        lines.append(f"  {i:<8}" + "".join(f" {_pct(v)}" for v in row))
    m = report["metrics"]
    lines.append("metrics (%): " + "  ".join(f"{k}={_pct(m.get(k)).strip()}" for k in METRIC_KEYS))
    return "\n".join(lines)
