"""Latency statistics: percentiles with distribution-free confidence intervals, and a stopping rule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MIN_P99_SAMPLES",
    "TimingPolicy",
    "is_stable",
    "latency_summary",
    "probe_bar",
    "quantile_ci",
    "stop_reason",
]

MIN_P99_SAMPLES = 100  # below this a p99 is reported with p99_reliable = False; a stable p50 never stops sooner


@dataclass(frozen=True)
class TimingPolicy:
    """Warm up, then time until the p50 estimate is stable or the time cap is hit."""

    warmup_s: float = 0.2
    warmup_runs: int = 3
    min_samples: int = 300
    max_samples: int = 20000
    max_time_s: float = 2.0
    rel_ci: float = 0.02  # stop when the 95% CI of p50 is within ±2% of it ...
    rel_ci_p99: float = 0.10  # ... and that of p99 within ±10%
    min_runs: int = 5  # even a slow model is run this many times


def quantile_ci(sorted_ms: np.ndarray, q: float, z: float = 1.96) -> tuple[float, float]:
    """95% CI of the q-quantile from order statistics (binomial normal approximation)."""
    n = len(sorted_ms)
    if n == 0:
        return (math.nan, math.nan)
    half = z * math.sqrt(n * q * (1 - q))
    lo = int(max(0, math.floor(n * q - half) - 1))
    hi = int(min(n - 1, math.ceil(n * q + half)))
    return float(sorted_ms[lo]), float(sorted_ms[hi])


def is_stable(samples_ms: list[float], policy: TimingPolicy) -> bool:
    if len(samples_ms) < policy.min_samples:
        return False
    s = np.sort(np.asarray(samples_ms))
    for q, rel in ((0.5, policy.rel_ci), (0.99, policy.rel_ci_p99)):
        value = float(np.percentile(s, q * 100))
        lo, hi = quantile_ci(s, q)
        if value <= 0 or (hi - lo) / 2 > rel * value:
            return False
    return True


def stop_reason(samples_ms: list[float], elapsed_s: float, policy: TimingPolicy) -> str | None:
    """Why timing stops after these samples (None: go on). A stable estimate stops it only once there are
    ``MIN_P99_SAMPLES`` samples, so a p99 is unreliable only when the time cap (or ``max_samples``) cut it short."""
    n = len(samples_ms)
    if n >= policy.max_samples:
        return "max samples"
    if elapsed_s >= policy.max_time_s and n >= policy.min_runs:
        return "time cap"
    if n >= MIN_P99_SAMPLES and n % 50 == 0 and is_stable(samples_ms, policy):
        return "stable"
    return None


def probe_bar(beat_ms: float, margin: float) -> float:
    """The latency probe's bar: the best p50 times the margin, plus 20 µs of process-to-process jitter that
    matters only for sub-millisecond models."""
    return beat_ms * margin + 0.02


def latency_summary(samples_ms: list[float], batch: int) -> dict[str, object]:
    """p50/p90/p99 (ms) with 95% CIs, sample count, mean, and single-stream throughput (samples/s): the rows
    run over the time spent running them, not over the timing loop's wall time, whose own bookkeeping (the
    stability checks) would dominate a model that runs in microseconds."""
    s = np.sort(np.asarray(samples_ms, dtype=np.float64))
    n = len(s)
    out: dict[str, object] = {"samples": n}
    for q, name in ((0.5, "p50"), (0.9, "p90"), (0.99, "p99")):
        out[f"{name}_ms"] = float(np.percentile(s, q * 100))
        out[f"{name}_ci_ms"] = list(quantile_ci(s, q))
    out["mean_ms"] = float(s.mean())
    out["min_ms"] = float(s[0])
    out["p99_reliable"] = n >= MIN_P99_SAMPLES
    busy_s = float(s.sum()) / 1e3
    out["throughput"] = batch * n / busy_s if busy_s > 0 else 0.0
    return out
