"""The batcher's latency model: the service time of a batch of ``b`` rows — typical (median) and tail (p99) —
starting from the profile ``fit`` measured (kept in the artifact's manifest) and replaced, size by size, by
the last ``window`` service times the server observed (empirical quantiles: an outlier ages out instead of
inflating a mean + kσ for good). Sizes not yet observed keep the profile's *shape* scaled by how the observed
sizes compare with it (a server sharing its cores runs slower than ``fit`` measured, at every size alike), are
interpolated linearly in ``b`` between known points and extrapolated from the last two; the estimate never
falls as the batch grows (a larger batch does not run faster)."""

from __future__ import annotations

import collections
import threading
from typing import Any

import numpy as np

__all__ = ["LatencyModel"]


class LatencyModel:
    def __init__(self, profile: list[dict[str, Any]] | None, min_samples: int = 8, window: int = 128) -> None:
        self._prior: dict[int, tuple[float, float]] = {}
        for p in profile or []:
            p50 = p.get("p50_ms") or p.get("p99_ms")
            if p50:  # fit's p99 on a shared machine holds rare multi-ms outliers: p50 × 1.5 is the prior tail
                self._prior[int(p["batch"])] = (float(p50) / 1e3, float(p50) * 1.5 / 1e3)
        self._obs: dict[int, collections.deque[float]] = {}
        self._fresh: dict[int, tuple[float, float]] = {}
        self._count: dict[int, int] = {}
        self._min, self._window = min_samples, window
        self._lock = threading.Lock()
        self._points: dict[int, tuple[float, float]] = self._combine()

    def observe(self, batch: int, seconds: float) -> None:
        with self._lock:
            buf = self._obs.setdefault(batch, collections.deque(maxlen=self._window))
            buf.append(seconds)
            n = self._count[batch] = self._count.get(batch, 0) + 1
            if len(buf) >= self._min and (n % 4 == 0 or batch not in self._fresh):
                arr = np.fromiter(buf, float, len(buf))
                self._fresh[batch] = (float(np.median(arr)), float(np.quantile(arr, 0.99)))
                self._points = self._combine()

    def _combine(self) -> dict[int, tuple[float, float]]:
        """Observed sizes as observed; the profile's other sizes scaled by the median observed/profile ratio;
        then made non-decreasing in the batch size."""
        scale = 1.0
        if self._prior:
            ratios = [t / p for b, (t, _) in self._fresh.items() if (p := _interp(self._prior, b, 0)) > 0]
            scale = float(np.median(ratios)) if ratios else 1.0
        pts = {b: (t * scale, q * scale) for b, (t, q) in self._prior.items() if b not in self._fresh}
        pts.update(self._fresh)
        out: dict[int, tuple[float, float]] = {}
        top = (0.0, 0.0)
        for b in sorted(pts):
            top = (max(top[0], pts[b][0]), max(top[1], pts[b][1]))
            out[b] = top
        return out

    def typical(self, batch: int) -> float:
        """Median service time (seconds) of a batch of ``batch`` rows; 0 while nothing is known."""
        return _interp(self._points, batch, 0)

    def p99(self, batch: int) -> float:
        """p99 service time (seconds) of a batch of ``batch`` rows; 0 while nothing is known."""
        return _interp(self._points, batch, 1)

    def largest_within(self, budget_s: float, cap: int, tail: bool = False) -> int:
        """The largest batch (≤ cap) whose typical (or, with ``tail``, p99) time fits in ``budget_s``; at least 1."""
        at = self.p99 if tail else self.typical
        lo, hi = 1, max(1, cap)  # binary search: the estimate never falls as the batch grows
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if at(mid) <= budget_s:
                lo = mid
            else:
                hi = mid - 1
        return lo


def _interp(pts: dict[int, tuple[float, float]], batch: int, which: int) -> float:
    """Linear in the batch size between known points, extrapolated from the last two; 0 with no points."""
    if not pts:
        return 0.0
    if batch in pts:
        return pts[batch][which]
    xs = sorted(pts)
    if len(xs) == 1:
        return pts[xs[0]][which] * max(1.0, batch / xs[0])  # one point: proportional above it
    lo = max((x for x in xs if x < batch), default=None)
    hi = min((x for x in xs if x > batch), default=None)
    if lo is None:
        lo, hi = xs[0], xs[1]
    elif hi is None:
        lo, hi = xs[-2], xs[-1]
    slope = (pts[hi][which] - pts[lo][which]) / (hi - lo)
    return max(pts[xs[0]][which] if batch > xs[0] else 0.0, pts[lo][which] + slope * (batch - lo))
