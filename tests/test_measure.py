"""The worker process: real measurements, and each way a candidate can fail without stopping the run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from chipfit.data import Dataset
from chipfit.measure.runner import run_isolated
from chipfit.measure.stats import latency_summary, quantile_ci
from conftest import FAST_TIMING, make_mlp


def _job(tmp_path: Path, backend: str, reference: str | None = None, save: str | None = None) -> dict:
    model = make_mlp(tmp_path / "m.onnx")
    from chipfit.model import onnx_file_hash

    x = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    data_dir = Dataset({"x": x}, (x[:, 0] > 0).astype(np.int64)).save(tmp_path / "data")
    (tmp_path / "variants").mkdir(exist_ok=True)
    return {
        "model_path": str(model),
        "model_sha256": onnx_file_hash(model),
        "passes": [],
        "backend": backend,
        "options": {"intra_op_num_threads": 1},
        "batch": 4,
        "input_names": ["x"],
        "data_dir": str(data_dir),
        "variants_dir": str(tmp_path / "variants"),
        "timing": FAST_TIMING.__dict__,
        "quality": {
            "chunk": 8,
            "metric": "top1",
            "fidelity_metric": "cosine",
            "save_reference": save,
            "reference": reference,
        },
    }


def test_ok_measurement_has_every_metric(tmp_path: Path) -> None:
    ref = str(tmp_path / "ref.npz")
    m = run_isolated(_job(tmp_path, "onnxruntime", save=ref), tmp_path / "w1", 60, None, 1)
    assert m.status == "ok", m.error
    for key in (
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "p50_ci_ms",
        "p99_ci_ms",
        "samples",
        "throughput",
        "peak_memory_mb",
        "size_mb",
        "compile_s",
        "accuracy",
    ):
        assert key in m.metrics, key
    assert m.metrics["p50_ms"] <= m.metrics["p90_ms"] <= m.metrics["p99_ms"]
    lo, hi = m.metrics["p99_ci_ms"]
    assert lo <= m.metrics["p99_ms"] <= hi
    assert m.metrics["eval_samples"] == 40 and 0 <= m.metrics["accuracy"] <= 1
    again = run_isolated(_job(tmp_path, "onnxruntime", reference=ref), tmp_path / "w2", 60, None, 1)
    assert again.metrics["fidelity"] == pytest.approx(1.0, abs=1e-6)


def test_a_worker_that_kills_itself_is_recorded(tmp_path: Path) -> None:
    m = run_isolated(_job(tmp_path, "fault_backends:crash"), tmp_path / "w", 60, None, 1)
    assert m.status == "failed" and "signal SIGKILL" in (m.error or "")


def test_a_hang_hits_the_timeout(tmp_path: Path) -> None:
    m = run_isolated(_job(tmp_path, "fault_backends:hang"), tmp_path / "w", 4, None, 1)
    assert m.status == "timeout" and "4s timeout" in (m.error or "")
    assert m.wall_s < 30


def test_memory_cap_gives_oom(tmp_path: Path) -> None:
    m = run_isolated(_job(tmp_path, "fault_backends:oom"), tmp_path / "w", 60, 2048, 1)
    assert m.status == "oom", m.error


def test_an_exception_is_failed_with_its_text(tmp_path: Path) -> None:
    m = run_isolated(_job(tmp_path, "fault_backends:broken"), tmp_path / "w", 60, None, 1)
    assert m.status == "failed" and "compile: ValueError: unsupported operator FancyOp in node 'n7'" in (m.error or "")


def test_quantile_ci_brackets_and_summary() -> None:
    s = np.sort(np.random.default_rng(0).exponential(size=1000))
    lo, hi = quantile_ci(s, 0.99)
    assert lo <= np.percentile(s, 99) <= hi
    few = latency_summary([1.0] * 50, batch=2, elapsed_s=0.1)
    assert few["p99_reliable"] is False and few["throughput"] == pytest.approx(1000.0)
