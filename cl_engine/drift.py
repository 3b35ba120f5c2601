"""Concept-drift detection on the prequential error stream: the Page-Hinkley test.

Each training batch is scored before the model learns from it; its error rate x (1 − prequential
accuracy) is fed here as `weight` observations of value x (one per sample), so thresholds are in
samples whatever the batch size. The test watches for an *increase* in the mean error:

    mean_t = mean_{t-1} + (x_t − mean_{t-1}) / t
    m_t    = α·m_{t-1} + (x_t − mean_t − δ)          M_t = min(M_{t-1}, m_t)
    drift when t ≥ min_samples and m_t − M_t > λ

δ is the magnitude of change tolerated, λ the alarm threshold, α ≤ 1 a fading factor (1: none).
After an alarm the detector starts afresh. A falling error (the model learning) only lowers m_t
and never raises an alarm. For errors in [0, 1] (variance ≤ ¼) a stationary stream crosses λ with
probability about exp(−8δλ) per excursion, and a jump of Δ in the error rate is flagged after
about λ / (Δ − δ) samples: the defaults (δ = 0.01, λ = 100) give ~3·10⁻⁴ and ~530 samples for Δ = 0.2.
"""
from __future__ import annotations

import math


class PageHinkley:
    def __init__(self, delta: float = 0.01, threshold: float = 100.0, min_samples: int = 30, alpha: float = 1.0):
        if not delta >= 0:
            raise ValueError(f"delta must be >= 0, got {delta}")
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0, got {threshold}")
        if min_samples < 1:
            raise ValueError(f"min_samples must be >= 1, got {min_samples}")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.delta, self.threshold, self.min_samples, self.alpha = delta, threshold, min_samples, alpha
        self.events = 0  # alarms raised so far
        self.seen = 0  # observations since construction, across resets
        self.last_event_at: int | None = None  # `seen` at the last alarm
        self.reset()

    def reset(self) -> None:
        """Forget the current run (after an alarm, or when the caller knows the regime changed)."""
        self.n = 0
        self.mean = 0.0
        self.cumulative = 0.0
        self.minimum = 0.0

    @property
    def statistic(self) -> float:
        """m_t − M_t: how far the cumulative deviation stands above its minimum."""
        return self.cumulative - self.minimum

    def update(self, x: float, weight: int = 1) -> bool:
        """Feed `weight` observations of value x; True when they raise an alarm (the detector then resets)."""
        if not math.isfinite(x):
            raise ValueError(f"observation must be finite, got {x}")
        if weight < 1:
            raise ValueError(f"weight must be >= 1, got {weight}")
        for _ in range(weight):
            self.n += 1
            self.seen += 1
            self.mean += (x - self.mean) / self.n
            self.cumulative = self.alpha * self.cumulative + (x - self.mean - self.delta)
            self.minimum = min(self.minimum, self.cumulative)
        if self.n >= self.min_samples and self.statistic > self.threshold:
            self.events += 1
            self.last_event_at = self.seen
            self.reset()
            return True
        return False

    def state_dict(self) -> dict:
        return {"delta": self.delta, "threshold": self.threshold, "min_samples": self.min_samples,
                "alpha": self.alpha, "events": self.events, "seen": self.seen, "last_event_at": self.last_event_at,
                "n": self.n, "mean": self.mean, "cumulative": self.cumulative, "minimum": self.minimum}

    def load_state_dict(self, state: dict) -> None:
        for key in ("delta", "threshold", "min_samples", "alpha", "events", "seen", "last_event_at", "n", "mean",
                    "cumulative", "minimum"):
            setattr(self, key, state[key])
