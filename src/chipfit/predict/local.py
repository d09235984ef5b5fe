"""Kernel-level predictions for ONNX Runtime candidates on this machine's CPU, when ``chipfit predict
calibrate`` has measured this machine: the candidate's variant is built (passes are cached by content, so the
measurement that may follow reuses it), ONNX Runtime's optimized graph at the candidate's session level gives
the kernels and their shapes at the candidate's batch, and the calibrated predictor sums them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from chipfit.predict.kernel_predictor import KernelPredictor
from chipfit.predict.kernels import Kernel

__all__ = [
    "LocalKernelPredictor",
    "kernel_counts",
    "kernel_error_basis",
    "kernel_prediction",
    "local_kernels",
    "model_kernels",
]

log = logging.getLogger("chipfit")


def kernel_counts(kernels: list[Kernel]) -> list[tuple[Kernel, int]]:
    """Identical kernels (same op, shapes, attributes) grouped with their count."""
    counts: dict[str, tuple[Kernel, int]] = {}
    for k in kernels:
        prev = counts.get(k.signature)
        counts[k.signature] = (k, prev[1] + 1 if prev else 1)
    return list(counts.values())


def model_kernels(model_path: Path, level: str | None, feeds: Mapping[str, np.ndarray]) -> list[tuple[Kernel, int]]:
    """The kernels ONNX Runtime runs for ``model_path`` at session ``level`` on ``feeds``, with counts."""
    from chipfit.predict.microbench import variant_kernels

    ks, _, _, _ = variant_kernels(model_path, level, dict(feeds))
    return kernel_counts([k for k, _ in ks])


def _feeds(sample: Mapping[str, np.ndarray], batch: int, dynamic_batch: bool) -> dict[str, np.ndarray]:
    out = {}
    for name, v in sample.items():
        row = np.asarray(v)[:1]
        out[name] = np.repeat(row, batch, axis=0) if dynamic_batch and row.ndim else np.asarray(v)
    return out


class LocalKernelPredictor:
    """Predicts ONNX Runtime CPU candidates of one model from their kernels (None for other candidates)."""

    def __init__(
        self,
        predictor: KernelPredictor,
        model_path: Path,
        model_hash: str,
        variants_dir: Path,
        pass_context: Any,
        sample: Mapping[str, np.ndarray],
        dynamic_batch: bool,
        cores: int,
        rel_error: float,
    ) -> None:
        self.predictor = predictor
        self.model_path, self.model_hash = model_path, model_hash
        self.variants_dir, self.pass_context = variants_dir, pass_context
        self.sample, self.dynamic_batch, self.cores = dict(sample), dynamic_batch, cores
        self.rel_error = rel_error
        self._kernels: dict[tuple[str, str, int], list[tuple[Kernel, int]] | None] = {}

    def applies(self, cand: Mapping[str, Any]) -> bool:
        opts = cand.get("options") or {}
        return (
            cand.get("backend", "onnxruntime") == "onnxruntime"
            and cand.get("target", "cpu") == "cpu"
            and not opts.get("device")
            and opts.get("execution_mode") != "parallel"
        )

    def kernels(self, cand: Mapping[str, Any]) -> list[tuple[Kernel, int]] | None:
        """The candidate's kernels (None when its variant cannot be built or run here)."""
        from chipfit.passes import apply_passes

        level = (cand.get("options") or {}).get("graph_optimization_level") or "all"
        batch = int(cand.get("batch") or 1)
        passes = list(cand.get("passes") or [])
        key = (repr(passes), str(level), batch)
        if key not in self._kernels:
            try:
                path, _ = apply_passes(self.model_path, self.model_hash, passes, self.variants_dir, self.pass_context)
                self._kernels[key] = model_kernels(path, level, _feeds(self.sample, batch, self.dynamic_batch))
            except Exception as exc:  # the measurement reports the failure; the prediction is just absent
                log.debug("no kernel prediction for %s: %s", passes, exc)
                self._kernels[key] = None
        return self._kernels[key]

    def predict_ms(self, cand: Mapping[str, Any]) -> float | None:
        """Predicted p50 (ms) of ``cand``, or None when the kernel predictor does not cover it."""
        if not self.applies(cand):
            return None
        ks = self.kernels(cand)
        if ks is None:
            return None
        opts = cand.get("options") or {}
        threads = int(opts.get("intra_op_num_threads") or opts.get("threads") or self.cores)
        ms = self.predictor.predict(ks, threads)
        return ms if math.isfinite(ms) and ms > 0 else None


def local_kernels(result: Any, data: Any, fit_kwargs: dict[str, Any]) -> Any:
    """The kernel-level predictor of ``result``'s model on this machine, or None when it is not calibrated."""
    from chipfit.data import load_data
    from chipfit.hardware.detect import cpu_quota
    from chipfit.passes.base import PassContext
    from chipfit.predict.calibrate import heldout_error, load_calibration, train
    from chipfit.workspace import default_home, subdir

    home = fit_kwargs.get("home") or default_home()
    calibration = load_calibration(home)
    if calibration is None:
        return None
    m = result.model
    inputs = load_data(data).inputs
    sample = {t.name: inputs[t.name][:1] for t in m.inputs if t.name in inputs}
    ctx = PassContext(None, None, [t.name for t in m.inputs])
    return LocalKernelPredictor(
        train(calibration),
        m.path,
        m.sha256,
        subdir("variants", home),
        ctx,
        sample,
        m.dynamic_batch,
        cpu_quota(),
        heldout_error(calibration),
    )


def kernel_prediction(kernel: Any, cand: dict[str, Any], fallback: Any) -> Any:
    """``fallback`` (a Prediction) with its p50 and p99 from the kernel-level predictor when it covers ``cand``."""
    from dataclasses import replace

    ms = kernel.predict_ms(cand)
    if ms is None:
        return fallback
    ratio = fallback.p99_ms / fallback.p50_ms if fallback.p50_ms > 0 else 1.3
    basis = "kernel-level (calibrated on this machine)"
    return replace(fallback, p50_ms=ms, p99_ms=ms * ratio, rel_error=kernel.rel_error, basis=basis)


def kernel_error_basis(rel_error: float) -> str:
    return f"±{rel_error:.0%}: median error of the kernel-level predictor on held-out seed models of the calibration"
