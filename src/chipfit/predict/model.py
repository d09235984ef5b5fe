"""The latency predictor: the roofline estimate times a learned correction.

A gradient-boosted model (scikit-learn's HistGradientBoostingRegressor) learns ``log(measured p50 /
roofline)`` from node/graph features, the candidate's backend, options and passes, and the target's rates,
on the measurements in the store. On the machine it was measured on it calibrates the roofline to what the
backends reach; on a target never measured the same correction is applied to that target's roofline, and
the stated error says it was not validated there. Without measurements the correction is a constant.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from chipfit.hardware.catalog import Target
from chipfit.hardware.cost import threads_of
from chipfit.predict.roofline import HEAVY_OPS, node_dtype, roofline_ms

__all__ = ["FEATURES", "Predictor", "features"]

_BACKENDS = ("onnxruntime", "openvino", "tvm", "torch", "null")
_OPT_LEVEL = {"disable": 0, "none": 0, "basic": 1, "extended": 2, "all": 3}
FEATURES = (
    "log_roofline",
    "log_flops",
    "log_bytes",
    "log_intensity",
    "log_nodes",
    "heavy_share",
    "log2_batch",
    "core_share",
    *(f"backend_{b}" for b in _BACKENDS),
    "opt_level",
    "parallel",
    "pass_fusion",
    "pass_int8_dynamic",
    "pass_int8_static",
    "pass_fp16",
    "pass_graph_opt",
    "tvm_tuned",
    "torch_compile",
    "ov_throughput",
    "log_peak",
    "log_bw",
    "is_gpu",
)
DEFAULT_CORRECTION = math.log(3.0)  # backends reach about a third of the roofline on small models, untrained


def features(info: Mapping[str, Any], candidate: Mapping[str, Any], target: Target) -> list[float]:
    """One feature row for a model (``model_info``), a candidate (``Candidate.to_dict()``) and a target."""
    opts = candidate.get("options") or {}
    passes = candidate.get("passes") or []
    names = {p.get("name") for p in passes}
    batch = int(candidate.get("batch") or 1)
    threads = threads_of(opts)
    dtype = node_dtype(passes)
    roof = roofline_ms(info, target, batch, dtype, threads)
    flops = max(1.0, float(info["flops"]) * batch)
    nbytes = max(1.0, float(info["bytes"]))
    heavy = sum(n[1] for n in info["nodes"] if n[0] in HEAVY_OPS)
    level = opts.get("graph_optimization_level")
    backend = candidate.get("backend", "onnxruntime")
    return [
        math.log(max(roof, 1e-6)),
        math.log(flops),
        math.log(nbytes),
        math.log(flops / nbytes),
        math.log(max(1, int(info["n_nodes"]))),
        heavy / max(1.0, float(info["flops"])),
        math.log2(batch),
        (threads or target.threads or target.cores) / float(target.threads or target.cores),
        *(float(backend == b) for b in _BACKENDS),
        float(_OPT_LEVEL.get(str(level), 3 if level is None else 1)),
        float(opts.get("execution_mode") == "parallel"),
        float("transformer_fusion" in names),
        float("int8_dynamic" in names),
        float(bool(names & {"int8_static", "nncf_int8"})),  # static int8 (ORT QDQ or NNCF)
        float("fp16" in names),
        float("ort_graph_opt" in names),
        float(bool(opts.get("tune_trials"))),
        float(opts.get("mode") == "compile"),
        float(opts.get("hint") == "THROUGHPUT"),
        math.log(target.peak(dtype)),
        math.log(target.mem_bw_gbs),
        float(target.gpu is not None),
    ]


@dataclass
class Prediction:
    p50_ms: float
    p99_ms: float
    roofline_ms: float
    rel_error: float  # expected relative error (median |error| on held-out measurements; inf when unknown)
    basis: str


class Predictor:
    """``fit`` on measurement rows, ``predict`` for any (model, candidate, target)."""

    def __init__(self) -> None:
        self._gbm: Any = None
        self._p99_ratio: dict[str, float] = {}
        self.n_train = 0
        self.rel_error = math.inf

    def fit(self, rows: Sequence[Mapping[str, Any]], min_rows: int = 20) -> Predictor:
        """``rows``: dicts with ``info``, ``candidate``, ``target`` and ``metrics`` (p50_ms, p99_ms)."""
        usable = [r for r in rows if r["metrics"].get("p50_ms")]
        self.n_train = len(usable)
        ratios: dict[str, list[float]] = {}
        for r in usable:
            if r["metrics"].get("p99_ms"):
                key = r["candidate"].get("backend", "onnxruntime")
                ratios.setdefault(key, []).append(r["metrics"]["p99_ms"] / r["metrics"]["p50_ms"])
        self._p99_ratio = {k: float(np.median(v)) for k, v in ratios.items()}
        if len(usable) < min_rows:
            return self
        from sklearn.ensemble import HistGradientBoostingRegressor
        from threadpoolctl import threadpool_limits

        x = np.array([features(r["info"], r["candidate"], r["target"]) for r in usable])
        y = np.log([r["metrics"]["p50_ms"] for r in usable]) - x[:, 0]
        # one thread: a store holds thousands of rows at most, where OpenMP's threads only spin against each
        # other and against the measurements running beside it (20x slower on a busy 2-core machine)
        with threadpool_limits(1):
            self._gbm = HistGradientBoostingRegressor(
                max_iter=400, learning_rate=0.05, min_samples_leaf=max(3, min(20, len(usable) // 20)), random_state=0
            ).fit(x, y)
        return self

    @property
    def trained(self) -> bool:
        """Whether a correction was learned (else the roofline × 3)."""
        return self._gbm is not None

    def correction(self, x: np.ndarray) -> np.ndarray:
        if self._gbm is None:
            return np.full(len(x), DEFAULT_CORRECTION)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            return np.asarray(self._gbm.predict(x))

    def predict_many(self, items: Sequence[tuple[Mapping[str, Any], Mapping[str, Any], Target]]) -> list[Prediction]:
        if not items:
            return []
        x = np.array([features(info, cand, target) for info, cand, target in items])
        p50 = np.exp(x[:, 0] + self.correction(x))
        basis = f"roofline × correction learned from {self.n_train} measurements" if self._gbm else "roofline × 3"
        out = []
        for (_, cand, _), roof, p in zip(items, np.exp(x[:, 0]), p50, strict=True):
            ratio = self._p99_ratio.get(cand.get("backend", "onnxruntime"), 1.3)
            out.append(Prediction(float(p), float(p * ratio), float(roof), self.rel_error, basis))
        return out

    def predict(self, info: Mapping[str, Any], candidate: Mapping[str, Any], target: Target) -> Prediction:
        return self.predict_many([(info, candidate, target)])[0]
