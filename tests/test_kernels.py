"""The kernel-level latency predictor: the kernels ONNX Runtime runs (its optimized graph, fused ops included),
`chipfit predict calibrate` cached per machine and reused, a kernel-level prediction of a real model within a
loose factor of its measurement (no verdict depends on this machine's speed beyond that factor), and `fit` /
`recommend` using it when this machine is calibrated."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import chipfit
from chipfit.measure.measurement import Measurement
from chipfit.passes.base import PassContext
from chipfit.predict.calibrate import calibrate, calibration_path, load_calibration, train
from chipfit.predict.local import model_kernels
from chipfit.search.guide import Guide
from chipfit.search.select import CandidateResult
from chipfit.search.space import Candidate
from chipfit.spec import Spec
from conftest import make_mlp


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A chipfit home calibrated for a couple of seconds (the first seeds are MLPs: a few kernel types)."""
    home = tmp_path_factory.mktemp("calibrated")
    calibrate(0.05, home=home)
    return home


def _use(calibrated: Path, home: Path) -> None:
    src = calibration_path(calibrated)
    shutil.copy2(src, calibration_path(home))


def test_kernels_are_ort_optimized_graph_with_fusions_and_shapes(tmp_path: Path) -> None:
    from chipfit.passes.int8_dynamic import pass_ as int8_dynamic

    mlp = make_mlp(tmp_path / "mlp.onnx", n_in=8, n_hidden=32)
    feeds = {"x": np.zeros((4, 8), np.float32)}
    fp32 = {k.op: (k, n) for k, n in model_kernels(mlp, "all", feeds)}
    assert "com.microsoft:FusedGemm" in fp32  # MatMul + Add + Relu: one kernel at level all
    fused, n = fp32["com.microsoft:FusedGemm"]
    assert n == 1 and fused.inputs[0][:3] == ((4, 8), "float32", False) and fused.inputs[1][2] is True
    assert fused.outputs[0][0] == (4, 32)
    assert "MatMul" not in fp32 and "Relu" not in fp32
    plain = {k.op for k, _ in model_kernels(mlp, "disable", feeds)}  # as given: no fusion
    assert {"MatMul", "Add", "Relu", "Softmax"} <= plain
    q = tmp_path / "q.onnx"
    int8_dynamic.apply(mlp, q, {"per_channel": False, "reduce_range": False}, PassContext(None, None, ["x"]))
    int8 = {k.op for k, _ in model_kernels(q, "all", feeds)}
    assert "com.microsoft:DynamicQuantizeMatMul" in int8


def test_calibrate_is_cached_per_machine_and_reused(calibrated: Path, tmp_path: Path) -> None:
    data = load_calibration(calibrated)
    assert data is not None and data["seeds"] and data["kernel_rows"] and data["model_rows"]
    assert all(r["ms"] > 0 and r["cv"] >= 0 for r in data["kernel_rows"])
    assert data["fingerprint"]["cores"] >= 1 and data["fingerprint"]["onnxruntime"]
    again, reused = calibrate(0.03, home=calibrated)
    assert reused and again["kernel_rows"] == data["kernel_rows"]
    assert load_calibration(tmp_path) is None  # another home: not calibrated


def test_kernel_prediction_within_a_loose_factor_of_the_measurement(calibrated: Path, tmp_path: Path) -> None:
    from chipfit.passes.kernel_graph import optimized_graph, time_sessions

    mlp = make_mlp(tmp_path / "mlp.onnx", n_in=256, n_hidden=512, n_out=10)
    feeds = {"x": np.random.default_rng(0).standard_normal((8, 256)).astype(np.float32)}
    opt = optimized_graph(mlp, "all", tmp_path / "opt.onnx")
    (measured, cv), *_ = time_sessions([(opt.read_bytes(), feeds)], threads=1)  # type: ignore[misc]
    predicted = train(load_calibration(calibrated) or {}).predict(model_kernels(mlp, "all", feeds), 1)
    assert measured / 5 < predicted < measured * 5, (predicted, measured, cv)


def test_fit_and_recommend_predict_onnxruntime_candidates_from_kernels_when_calibrated(
    calibrated: Path, chipfit_home: Path, tmp_path: Path, mlp_npz: Path, small_space: Any, fast_settings: Any
) -> None:
    from chipfit.predict.local import kernel_prediction, local_kernels
    from chipfit.predict.model import Prediction

    _use(calibrated, chipfit_home)
    result = chipfit.fit(tmp_path / "mlp.onnx", mlp_npz, space=small_space, settings=fast_settings, progress=False)
    ort = [r for r in result.candidates if r.measurement.ok and not r.candidate.reference]
    assert ort and all(r.candidate.backend == "onnxruntime" for r in ort)
    assert all(r.metric("predicted_p50_ms") and r.metric("predicted_p50_ms") > 0 for r in ort)
    # recommend: this CPU's ONNX Runtime rows from the kernels of the same model
    kernel = local_kernels(result, mlp_npz, {})
    assert kernel is not None
    cand = {"backend": "onnxruntime", "passes": [], "options": {"intra_op_num_threads": 1}, "batch": 4}
    fallback = Prediction(100.0, 130.0, 1.0, 0.5, "roofline × 3")
    p = kernel_prediction(kernel, cand, fallback)
    assert p.basis.startswith("kernel-level") and p.p50_ms != 100.0 and p.p99_ms == pytest.approx(p.p50_ms * 1.3)
    gpu = {**cand, "options": {"device": "cuda"}}
    assert kernel_prediction(kernel, gpu, fallback) is fallback  # not an ONNX Runtime CPU candidate


def test_fit_without_calibration_keeps_the_store_predictor(
    tmp_path: Path, mlp_npz: Path, small_space: Any, fast_settings: Any
) -> None:
    result = chipfit.fit(tmp_path / "mlp.onnx", mlp_npz, space=small_space, settings=fast_settings, progress=False)
    assert not any(r.metric("predicted_p50_ms") for r in result.candidates)


class _Fixed:
    """A kernel-level predictor with known predictions (the guide's rule is what is tested)."""

    rel_error = 0.1

    def __init__(self, ms: dict[str, float]) -> None:
        self.ms = ms

    def predict_ms(self, cand: dict[str, Any]) -> float | None:
        return self.ms.get(json.dumps(cand["passes"]))


def _cand(passes: list[dict[str, Any]], batch: int = 1) -> Candidate:
    return Candidate(backend="onnxruntime", passes=tuple(passes), options={}, batch=batch)


def test_guide_skips_candidates_predicted_far_from_the_best_measured() -> None:
    slow, near = [{"name": "fp16", "params": {}}], [{"name": "int8_dynamic", "params": {}}]
    fixed = _Fixed({json.dumps(slow): 40.0, json.dumps(near): 12.0})
    from chipfit.predict.model import Prediction

    store_says = Prediction(1.0, 1.3, 1.0, float("inf"), "roofline × 3")  # the untrained store predictor
    guide = Guide(lambda c: store_says, trained=False, rel_error=float("inf"), kernel=fixed)
    best = CandidateResult(_cand([]), Measurement("ok", {"p50_ms": 10.0}), "measured")
    spec = Spec(objective="latency")
    reason = guide.skip_reason(_cand(slow), spec, [best])
    assert reason and "40 ms (kernel-level)" in reason and "10 ms" in reason
    assert guide.skip_reason(_cand(near), spec, [best]) is None  # within the margin: measured
    assert guide.skip_reason(_cand(slow), spec, []) is None  # nothing measured yet: no bar
    # this run measured a candidate at a quarter of its prediction (a busier calibration, a quieter machine now):
    # predictions are scaled by it, and the slow one (40 ms predicted -> 10 ms) is measured
    scaled = CandidateResult(_cand([]), Measurement("ok", {"p50_ms": 10.0, "predicted_p50_ms": 40.0}), "measured")
    assert guide.skip_reason(_cand(slow), spec, [scaled]) is None
    assert guide.skip_reason(_cand(slow), Spec(objective="memory"), [best]) is None  # not ranked by p50
    other = Candidate(backend="openvino", passes=(), options={}, batch=1)  # no kernel-level prediction: rescaled
    assert [c.passes for c in guide.order([_cand(slow), other, _cand(near)])] == [tuple(near), (), tuple(slow)]
    assert guide.scale == pytest.approx(26.0)  # the median of the kernel-level / store ratios (12, 40)


@pytest.mark.parametrize("value", ["0", "-2", "abc"])
def test_calibrate_rejects_bad_minutes(cli_run: Any, value: str) -> None:
    err = cli_run("predict", "calibrate", "--max-minutes", value, code=2)
    assert "--max-minutes" in err


def test_predict_eval_reports_the_kernel_level_predictor_with_its_noise_floor(
    calibrated: Path, chipfit_home: Path, cli_run: Any
) -> None:
    _use(calibrated, chipfit_home)
    report = json.loads(cli_run("predict-eval", "--json", "-q"))
    k = report["kernel_level"]
    data = load_calibration(chipfit_home) or {}
    seeds = {r["seed"] for r in data["model_rows"]}
    if len(seeds) >= 3:  # held out by seed model: every whole-model timing is scored once
        assert k["n"] == len(data["model_rows"]) and k["models"] == len(seeds)
        assert 0 <= k["within_10pct"] <= 1 and k["median_ape"] >= 0 and k["noise_cv"] >= 0
    else:
        assert k["n"] == 0
    assert "noise_floor" in report or report["n"] == 0  # the store's evaluation (empty here)
