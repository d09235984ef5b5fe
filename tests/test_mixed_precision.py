"""The accuracy-aware search on a model with one deliberately fragile layer: it must keep that layer fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import chipfit
from chipfit.search.mixed_precision import _schedule
from chipfit.search.space import SpaceOptions


def _fragile_mlp(path: Path, width: int = 64) -> Path:
    """x (≥ 0) → fc1 → Relu → fc2 → Relu → fc3 → y. fc2 is fragile: every column holds one huge weight in a row
    whose input is always 0 (a dead unit of fc1), so fp32 ignores it but any int8 scale, per tensor or per
    column, rounds the ordinary weights to zero. fc1 and fc3 quantize gently."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.2, size=(width, width)).astype(np.float32)
    dead = np.arange(8)
    w1[:, dead] = -1.0  # non-negative inputs: these units never fire
    w2 = rng.normal(0, 0.2, size=(width, width)).astype(np.float32)
    w2[dead[np.arange(width) % len(dead)], np.arange(width)] = 400.0
    w3 = rng.normal(0, 0.2, size=(width, 8)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="fc1"),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="fc2"),
        helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
        helper.make_node("MatMul", ["r2", "w3"], ["y"], name="fc3"),
    ]
    graph = helper.make_graph(
        nodes,
        "fragile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [numpy_helper.from_array(w, n) for w, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


# ONNX Runtime's int8_dynamic variants at batch 1, one thread: what the accuracy-aware search works on
_INT8_ONLY = dict(
    batch_sizes=(1,), threads=(1,), opt_levels=("none",), execution_modes=("sequential",), passes=("int8_dynamic",)
)


def test_schedule_adds_nodes_back_gradually() -> None:
    assert _schedule(3) == [1, 2]
    assert _schedule(20) == [1, 2, 3, 4, 6, 9, 13, 19]


def test_mixed_precision_keeps_the_fragile_layer_fp32(tmp_path: Path, fast_settings) -> None:  # type: ignore[no-untyped-def]
    model = _fragile_mlp(tmp_path / "fragile.onnx")
    x = np.abs(np.random.default_rng(1).normal(size=(96, 64))).astype(np.float32)
    x[:, :] *= 0.05
    np.savez(tmp_path / "data.npz", x=x)
    space = SpaceOptions(backends=("onnxruntime",), **_INT8_ONLY)
    result = chipfit.fit(
        model,
        tmp_path / "data.npz",
        space=space,
        settings=fast_settings,
        min_fidelity=0.999,
        objective="size",
        out=tmp_path / "art",
    )
    plain = [
        r
        for r in result.candidates
        if r.candidate.pass_label().startswith("int8_dynamic") and "fp32" not in r.candidate.pass_label()
    ]
    assert plain and all(r.measurement.ok and not r.feasible for r in plain)  # plain int8 breaks the bound
    report = result.mixed_precision
    assert report is not None and report["ranking"][0][0] == "fc2", report  # the fragile layer ranks first
    assert report["steps"][0]["added"][0][0] == "fc2" and report["steps"][0]["feasible"], report
    assert "bound met with 1 of 3 nodes kept in fp32: fc2" in report["outcome"]
    w = result.winner
    assert w is not None and w.candidate.passes[0]["params"]["exclude"] == ["fc2"]
    assert w.metric("fidelity") >= 0.999
    assert w.metric("size_mb") < result.reference.metric("size_mb")  # still smaller than fp32
    assert any("mixed precision" in n for n in result.notes)
    html = (tmp_path / "art" / "report.html").read_text()
    assert "Accuracy-aware mixed precision" in html and "fc2" in html
    loaded = chipfit.runtime.load(tmp_path / "art")  # the delivered model is the mixed one: fc2 still fp32
    assert loaded.run({"x": x[:2]})[0].shape == (2, 8)
    import onnx as _onnx

    nodes = {n.name: n.op_type for n in _onnx.load(str(tmp_path / "art" / "model.onnx")).graph.node}
    assert nodes.get("fc2") == "MatMul"


def test_without_a_quality_bound_no_mixed_precision_but_the_default_floor(tmp_path: Path, fast_settings) -> None:  # type: ignore[no-untyped-def]
    model = _fragile_mlp(tmp_path / "fragile.onnx")
    np.savez(tmp_path / "data.npz", x=np.ones((40, 64), np.float32))
    space = SpaceOptions(backends=("onnxruntime",), **_INT8_ONLY)
    result = chipfit.fit(model, tmp_path / "data.npz", space=space, settings=fast_settings, objective="size")
    assert result.mixed_precision is None
    # int8 is the smallest but breaks the model: without a quality bound the default floor still keeps it out
    from chipfit.search.select import precision_of
    from chipfit.spec import DEFAULT_MIN_FIDELITY

    int8 = [r for r in result.candidates if r.measurement.ok and precision_of(r.candidate) == "int8"]
    assert int8 and all(r.quality_floor == DEFAULT_MIN_FIDELITY and not r.feasible for r in int8)
    assert all("default floor for int8" in r.violations[0].describe() for r in int8)
    assert result.winner is not None and precision_of(result.winner.candidate) == "fp32"
    assert any("default quality floor" in n for n in result.notes)


@pytest.mark.parametrize("flag", ["--passes"])
def test_cli_rejects_unknown_pass(flag: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "chipfit.cli",
            "fit",
            str(tmp_path / "m.onnx"),
            "--data",
            str(tmp_path / "d.npz"),
            flag,
            "int4",
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and "--passes must be a comma-separated list of transformer_fusion" in p.stderr
    assert "Traceback" not in p.stderr
