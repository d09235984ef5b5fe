"""The kernel-level latency predictor (after nn-Meter): a model's latency is the per-call overhead plus the sum
of its kernels' predicted times, each kernel predicted from its op, shapes and threads by a model trained on
micro-benchmarks of single kernels on this machine.

Each kernel's time is ``roofline(flops, bytes, threads) × exp(g(features))``: the roofline carries the scaling
with size (trees do not extrapolate), a gradient-boosted model ``g`` (the op is a categorical feature, so each
kernel type gets its own splits) learns how far that kernel type is from it. A kernel type never measured
gets the roofline times the median ratio over all measured kernels (the prior). A final non-negative linear
fit on the whole seed models measured beside their kernels, ``latency ≈ overhead + a·Σkernels + b·n_kernels``,
accounts for what running kernels back to back changes (caches, dispatch between nodes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from chipfit.predict.kernels import Kernel, kernel_bytes, kernel_features, kernel_flops

__all__ = ["KernelPredictor", "roofline_kernel_ms"]

_GFLOPS_PER_THREAD = 50.0  # nominal: the learned ratio absorbs the machine's real rates
_GBS = 20.0


def roofline_kernel_ms(k: Kernel, threads: int) -> float:
    """A nominal roofline time of ``k``: the longer of its arithmetic and its memory traffic."""
    t = max(kernel_flops(k) / (_GFLOPS_PER_THREAD * max(1, threads) * 1e9), kernel_bytes(k) / (_GBS * 1e9))
    return max(t * 1e3, 1e-5)


class KernelPredictor:
    """``fit`` on calibration data (``calibrate.Calibration``), ``predict`` a kernel list's latency."""

    def __init__(self) -> None:
        self._gbm: Any = None
        self._ops: dict[str, int] = {}
        self._prior = 0.0  # log of the median measured / roofline ratio
        self.overhead_ms: dict[int, float] = {}
        self.a, self.b = 1.0, 0.0
        self.n_kernels = 0
        self.n_models = 0

    def _x(self, kernels: Sequence[Kernel], threads: Sequence[int]) -> np.ndarray:
        rows = [[float(self._ops.get(k.op, -1)), *kernel_features(k, t)] for k, t in zip(kernels, threads, strict=True)]
        x = np.array(rows, dtype=float)
        x[x[:, 0] < 0, 0] = np.nan  # an op never measured: the trees' missing-value branch
        return x

    def net_ms(self, k: Kernel, threads: int, ms: float) -> float:
        """A single-kernel model's time less the per-call overhead: the kernel's own time."""
        return max(ms - self._overhead(threads), 0.05 * ms, 1e-4)

    def _overhead(self, threads: int) -> float:
        if not self.overhead_ms:
            return 0.0
        near = min(self.overhead_ms, key=lambda t: abs(t - threads))
        return self.overhead_ms[near]

    def fit(
        self,
        kernel_rows: Sequence[tuple[Kernel, int, float]],
        model_rows: Sequence[tuple[Sequence[tuple[Kernel, int]], int, float]] = (),
        overhead_ms: Mapping[int, float] | None = None,
    ) -> KernelPredictor:
        """``kernel_rows``: (kernel, threads, measured ms of its one-node model); ``model_rows``: (kernels with
        counts, threads, measured ms of the whole model); ``overhead_ms``: per thread count, an empty call."""
        from sklearn.ensemble import HistGradientBoostingRegressor
        from threadpoolctl import threadpool_limits

        self.overhead_ms = {int(t): float(v) for t, v in (overhead_ms or {}).items()}
        self.n_kernels, self.n_models = len(kernel_rows), len(model_rows)
        if not kernel_rows:
            return self
        self._ops = {op: i for i, op in enumerate(sorted({k.op for k, _, _ in kernel_rows}))}
        ks = [k for k, _, _ in kernel_rows]
        ts = [t for _, t, _ in kernel_rows]
        roof = np.array([roofline_kernel_ms(k, t) for k, t in zip(ks, ts, strict=True)])
        y = np.log([self.net_ms(k, t, ms) for k, t, ms in kernel_rows]) - np.log(roof)
        self._prior = float(np.median(y))
        if len(kernel_rows) >= 8:
            with threadpool_limits(1):
                self._gbm = HistGradientBoostingRegressor(
                    max_iter=300,
                    learning_rate=0.08,
                    min_samples_leaf=max(2, min(10, len(kernel_rows) // 40)),
                    categorical_features=[0],
                    random_state=0,
                ).fit(self._x(ks, ts), y)
        self._fit_models(model_rows)
        return self

    def _fit_models(self, model_rows: Sequence[tuple[Sequence[tuple[Kernel, int]], int, float]]) -> None:
        """The non-negative linear fit of whole-model latency on (Σ kernel predictions, kernel count)."""
        if len(model_rows) < 3:
            return
        from scipy.optimize import nnls

        rows, target = [], []
        for kernels, threads, ms in model_rows:
            s = self.kernel_sum(kernels, threads)
            n = float(sum(c for _, c in kernels))
            w = 1.0 / ms  # relative error: each model weighs the same whatever its size
            rows.append([s * w, n * w])
            target.append((ms - self._overhead(threads)) * w)
        coef, _ = nnls(np.array(rows), np.array(target))
        if coef[0] > 0:
            self.a, self.b = float(coef[0]), float(coef[1])

    def kernel_ms(self, kernels: Sequence[Kernel], threads: Sequence[int]) -> np.ndarray:
        """Each kernel's predicted time alone (ms), without the per-call overhead."""
        if not kernels:
            return np.zeros(0)
        roof = np.array([roofline_kernel_ms(k, t) for k, t in zip(kernels, threads, strict=True)])
        if self._gbm is None:
            return roof * math.exp(self._prior)
        from threadpoolctl import threadpool_limits

        x = self._x(kernels, threads)
        with threadpool_limits(1):
            g = np.asarray(self._gbm.predict(x))
        g[np.isnan(x[:, 0])] = self._prior  # unseen kernel type: the roofline prior
        return roof * np.exp(g)

    def kernel_sum(self, kernels: Sequence[tuple[Kernel, int]], threads: int) -> float:
        ms = self.kernel_ms([k for k, _ in kernels], [threads] * len(kernels))
        return float(sum(m * c for m, (_, c) in zip(ms, kernels, strict=True)))

    def predict(self, kernels: Sequence[tuple[Kernel, int]], threads: int) -> float:
        """Latency (ms) of one call of a model made of ``kernels`` (each with its count) on ``threads``."""
        n = float(sum(c for _, c in kernels))
        return self._overhead(threads) + self.a * self.kernel_sum(kernels, threads) + self.b * n

    def unseen(self, kernels: Sequence[tuple[Kernel, int]]) -> list[str]:
        """The kernel types in ``kernels`` the micro-benchmarks never measured (predicted by the prior)."""
        return sorted({k.op for k, _ in kernels if k.op not in self._ops})
