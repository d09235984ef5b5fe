"""The kernel-level latency predictor (after nn-Meter): a model's latency is the per-call overhead plus the sum
of its kernels' predicted times, each kernel predicted from its op, shapes and threads by a model trained on
micro-benchmarks on this machine (each kernel's own time in seed models, from ONNX Runtime's profiler).

Each kernel's time is ``roofline(flops, bytes, threads) × exp(g(features))``: the roofline carries the scaling
with size (trees do not extrapolate), a gradient-boosted model ``g`` (the op is a categorical feature, so each
kernel type gets its own splits) learns how far that kernel type is from it. A kernel type never measured
gets the roofline times the median ratio over all measured kernels (the prior). A final fit in log space on the
whole seed models timed beside their kernels, ``log(latency - overhead) ≈ c·(1, log Σkernels, log n_kernels,
one thread, int8 share, small-kernel share)``, accounts for what the profiler does not see (dispatch between
nodes, the profiler's own cost per node, preemption of long runs on a shared machine).
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
        self.coef: list[float] | None = None  # the whole-model fit (see _model_features)
        self.n_kernels = 0
        self.n_models = 0

    def _x(self, kernels: Sequence[Kernel], threads: Sequence[int]) -> np.ndarray:
        rows = [[float(self._ops.get(k.op, -1)), *kernel_features(k, t)] for k, t in zip(kernels, threads, strict=True)]
        x = np.array(rows, dtype=float)
        x[x[:, 0] < 0, 0] = np.nan  # an op never measured: the trees' missing-value branch
        return x

    def net_ms(self, k: Kernel, threads: int, ms: float) -> float:
        """A kernel's own time as the profiler measured it (floored at 0.1 µs)."""
        return max(ms, 1e-4)

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

    def _model_features(self, kernels: Sequence[tuple[Kernel, int]], threads: int) -> list[float]:
        """What the whole-model fit reads: log Σ kernels, log kernel count, one thread or more, the share of Σ in
        int8 kernels, and the share of kernels under 10 µs (where per-node costs outweigh the kernel)."""
        ms = self.kernel_ms([k for k, _ in kernels], [threads] * len(kernels))
        s = float(sum(m * c for m, (_, c) in zip(ms, kernels, strict=True)))
        n = float(sum(c for _, c in kernels))
        int8 = sum(
            m * c for m, (k, c) in zip(ms, kernels, strict=True) if any(t in ("int8", "uint8") for _, t, _ in k.inputs)
        )
        small = sum(c for m, (_, c) in zip(ms, kernels, strict=True) if m < 0.01)
        return [
            1.0,
            math.log(max(s, 1e-5)),
            math.log(max(n, 1.0)),
            float(threads == 1),
            float(int8) / max(s, 1e-9),
            float(small) / max(n, 1.0),
        ]

    def _fit_models(self, model_rows: Sequence[tuple[Sequence[tuple[Kernel, int]], int, float]]) -> None:
        """Least squares in log space (relative error) of whole-model latency less the per-call overhead on
        :meth:`_model_features`; with fewer than 8 seed models, the plain sum."""
        if len(model_rows) < 8:
            return
        x = np.array([self._model_features(k, t) for k, t, _ in model_rows])
        y = np.array([math.log(max(ms - self._overhead(t), 1e-5)) for _, t, ms in model_rows])
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        if 0.5 <= coef[1] <= 2.0:  # a sane fit; else the plain sum
            self.coef = [float(c) for c in coef]

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
        if self.coef is None:
            return self._overhead(threads) + self.kernel_sum(kernels, threads)
        z = float(np.dot(self.coef, self._model_features(kernels, threads)))
        return self._overhead(threads) + math.exp(min(z, 20.0))

    def unseen(self, kernels: Sequence[tuple[Kernel, int]]) -> list[str]:
        """The kernel types in ``kernels`` the micro-benchmarks never measured (predicted by the prior)."""
        return sorted({k.op for k, _ in kernels if k.op not in self._ops})
