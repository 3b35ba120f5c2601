"""Every learning summary derives from one accuracy matrix.

R[i][j] is the accuracy on bucket j's held-out set after training through bucket i; b[j] is the
accuracy on bucket j before any training. Entries not measured are NaN and summaries skip them.

GEM family (Lopez-Paz & Ranzato 2017), on the last row n-1:
  ACC = mean_j R[n-1][j]     BWT = mean_{j<n-1} R[n-1][j] − R[j][j]     FWT = mean_{j>0} R[j-1][j] − b[j]
CLEAR family (Lin et al. 2021), absolute accuracies over regions of the matrix:
  in-domain = mean_i R[i][i]   next-domain = mean_i R[i][i+1]   Acc = mean_{i≥j}   BwT = mean_{i>j}
  FwT = mean_{i<j}             score = ¼(in-domain + next-domain + BwT + FwT)
  (the five regions are the CLEAR paper's and Avalanche's CLEARMetric; the score is this project's
  own summary, from the course study it grew from, not a metric of the paper)
Forgetting of bucket j < n-1 (Chaudhry et al. 2018): max_{j≤l<n-1} R[l][j] − R[n-1][j].
"""
from __future__ import annotations

import math
from collections import deque

import numpy as np

METRIC_KEYS = ("acc", "bwt", "fwt", "forgetting", "in_domain", "next_domain",
               "clear_acc", "clear_bwt", "clear_fwt", "clear_score")


def _mean(values) -> float:
    values = [float(v) for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def _cell(M: np.ndarray, i: int, j: int) -> float:
    """M[i][j], or NaN where the matrix has no such cell (a bucket without a held-out set)."""
    return float(M[i, j]) if i < M.shape[0] and j < M.shape[1] else math.nan


def gem_metrics(R: np.ndarray, b: np.ndarray) -> dict[str, float]:
    n = R.shape[0]
    if n == 0:
        return {"acc": math.nan, "bwt": math.nan, "fwt": math.nan}
    last = n - 1
    b = b.reshape(1, -1)
    return {
        "acc": _mean(_cell(R, last, j) for j in range(n)),  # the buckets trained so far
        "bwt": _mean(_cell(R, last, j) - _cell(R, j, j) for j in range(last)),
        "fwt": _mean(_cell(R, j - 1, j) - _cell(b, 0, j) for j in range(1, n)),
    }


def clear_metrics(R: np.ndarray) -> dict[str, float]:
    n, m = R.shape
    cells = [(i, j) for i in range(n) for j in range(m)]
    in_domain = _mean(R[i][i] for i in range(min(n, m)))
    next_domain = _mean(R[i][i + 1] for i in range(min(n, m - 1)))
    bwt = _mean(R[i][j] for i, j in cells if i > j)
    fwt = _mean(R[i][j] for i, j in cells if i < j)
    return {
        "in_domain": in_domain,
        "next_domain": next_domain,
        "clear_acc": _mean(R[i][j] for i, j in cells if i >= j),
        "clear_bwt": bwt,
        "clear_fwt": fwt,
        "clear_score": _mean([in_domain, next_domain, bwt, fwt]) if not any(
            math.isnan(v) for v in (in_domain, next_domain, bwt, fwt)) else math.nan,
    }


def forgetting_per_bucket(R: np.ndarray) -> list[float]:
    n = R.shape[0]
    out = []
    for j in range(min(n - 1, R.shape[1])):
        earlier = [R[l][j] for l in range(j, n - 1) if not math.isnan(R[l][j])]
        out.append(max(earlier) - R[n - 1][j] if earlier and not math.isnan(R[n - 1][j]) else math.nan)
    return out


class AccuracyMatrix:
    """R grows a row per finished bucket and a column per bucket with a held-out set."""

    def __init__(self) -> None:
        self.rows: list[list[float]] = []
        self.initial: list[float] = []
        self.version = 0  # bumped on every change, so summaries can be cached

    def _width(self) -> int:
        return max([len(self.initial)] + [len(r) for r in self.rows])

    def set_initial(self, accuracies: dict[int, float]) -> None:
        for j, a in accuracies.items():
            self.initial += [math.nan] * (j + 1 - len(self.initial))
            self.initial[j] = a
        self.version += 1

    def add_row(self, bucket: int, accuracies: dict[int, float]) -> None:
        """The row after training through `bucket`; rows must arrive in bucket order."""
        if bucket != len(self.rows):
            raise ValueError(f"accuracy row for bucket {bucket} but {len(self.rows)} rows exist; expected bucket "
                             f"{len(self.rows)}")
        row = [math.nan] * (max(accuracies, default=-1) + 1)
        for j, a in accuracies.items():
            row[j] = a
        self.rows.append(row)
        self.version += 1

    def matrix(self) -> np.ndarray:
        width = self._width()
        R = np.full((len(self.rows), width), math.nan)
        for i, r in enumerate(self.rows):
            R[i, : len(r)] = r
        return R

    def initial_row(self) -> np.ndarray:
        b = np.full(self._width(), math.nan)
        b[: len(self.initial)] = self.initial
        return b

    def summary(self) -> dict[str, float]:
        R = self.matrix()
        forgetting = forgetting_per_bucket(R)
        return {**gem_metrics(R, self.initial_row()), "forgetting": _mean(forgetting), **clear_metrics(R)}

    def state_dict(self) -> dict:
        return {"rows": [list(r) for r in self.rows], "initial": list(self.initial)}

    def load_state_dict(self, state: dict) -> None:
        self.rows = [list(r) for r in state["rows"]]
        self.initial = list(state["initial"])
        self.version += 1


class PrequentialWindow:
    """Test-then-train accuracy over the last `window` samples, and over the whole stream."""

    def __init__(self, window: int = 1000):
        self.window = window
        self.batches: deque[tuple[int, int]] = deque()
        self.in_window = [0, 0]  # correct, total
        self.overall = [0, 0]

    def add(self, correct: int, total: int) -> None:
        self.batches.append((correct, total))
        self.in_window[0] += correct
        self.in_window[1] += total
        self.overall[0] += correct
        self.overall[1] += total
        while self.in_window[1] - self.batches[0][1] >= self.window:
            c, t = self.batches.popleft()
            self.in_window[0] -= c
            self.in_window[1] -= t

    @property
    def accuracy(self) -> float:
        return self.in_window[0] / self.in_window[1] if self.in_window[1] else math.nan

    @property
    def overall_accuracy(self) -> float:
        return self.overall[0] / self.overall[1] if self.overall[1] else math.nan

    def state_dict(self) -> dict:
        return {"window": self.window, "batches": list(self.batches), "overall": list(self.overall)}

    def load_state_dict(self, state: dict) -> None:
        self.window = state["window"]
        self.batches = deque(tuple(b) for b in state["batches"])
        self.in_window = [sum(c for c, _ in self.batches), sum(t for _, t in self.batches)]
        self.overall = list(state["overall"])
