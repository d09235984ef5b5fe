"""OpenVINO's bf16 and int8 (NNCF, ONNX Runtime's QDQ) and TVM on BERT-family graphs: a 2-layer BERT from the
``transformers`` config with random weights, exported by the TorchScript exporter as a user would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("openvino")
pytest.importorskip("transformers")

FEEDS = ("input_ids", "attention_mask")


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """(the exported BERT, its calibration folder, test inputs padded like real text)."""
    from chipfit.data import Dataset
    from chipfit.testing.hf_models import export_hf, hf_encoder, hf_inputs

    folder = tmp_path_factory.mktemp("bert")
    path = export_hf(hf_encoder("bert", layers=2, hidden=64), hf_inputs(8), folder / "bert.onnx", dynamo=False)
    calib = Dataset(hf_inputs(32, seed=1)).save(folder / "calib")
    return path, calib, hf_inputs(4, seed=2)


def _variant(bert: Any, steps: list[dict[str, Any]]) -> tuple[Path, list[str]]:
    from chipfit.passes import PassContext, apply_passes

    path, calib, _ = bert
    variants = path.parent / "variants"
    variants.mkdir(exist_ok=True)
    return apply_passes(path, "bert", steps, variants, PassContext(calib_dir=calib, input_names=list(FEEDS)))


def test_bf16_is_measured_for_every_openvino_variant_where_the_cpu_has_it(bert: Any) -> None:
    from chipfit.backends.openvino import native_bf16
    from chipfit.model import load_model
    from chipfit.search.space import SpaceOptions, build_space

    model = load_model(bert[0])
    cands = [c for c in build_space(model, SpaceOptions(backends=("openvino",), batch_sizes=(1,)), 2)]
    ov = [c for c in cands if c.backend == "openvino"]
    chains = {json.dumps(c.passes, sort_keys=True) for c in ov}
    names = {p["name"] for c in ov for p in c.passes}
    assert {"nncf_int8", "int8_static"} <= names, names
    assert any(p.get("params", {}).get("keep_sensitive") for c in ov for p in c.passes)
    why = native_bf16()
    for chain in chains:
        same = [c for c in ov if json.dumps(c.passes, sort_keys=True) == chain]
        default = {c.options["precision"] for c in same if not c.option_sweep and not c.skip}
        if why is None:  # bf16 next to f32 with the default hint, for every variant: not left to the late sweep
            assert default == {"f32", "bf16"}, (chain, default)
        else:
            assert default == {"f32"}, (chain, default)
    skipped = [c for c in ov if c.options.get("precision") == "bf16" and c.skip]
    if why is None:
        assert not skipped
    else:  # listed once, with the reason
        assert len(skipped) == 1 and "native bf16" in (skipped[0].skip or "")


def test_without_native_bf16_it_is_listed_once_as_skipped_with_the_reason(
    bert: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CPU without AVX512-BF16/AMX (the detection says so): OpenVINO would emulate bf16, slowly."""
    import chipfit.hardware.detect as detect
    from chipfit.backends.openvino import backend
    from chipfit.model import load_model

    real = detect.cpu_features
    monkeypatch.setattr(detect, "cpu_features", lambda isa=None: {**real(isa), "bf16": False})
    opts = backend.option_space(load_model(bert[0]), 2)
    assert opts.primary == 1 and [o["precision"] for o in opts.options[: opts.primary]] == ["f32"]
    skipped = [opts.options[j] for j in opts.option_skip]
    assert [o["precision"] for o in skipped] == ["bf16"]
    assert "no native bf16" in next(iter(opts.option_skip.values()))


def test_the_f32_baseline_really_runs_f32_and_bf16_reads_back_bf16(bert: Any) -> None:
    from chipfit.backends.openvino import backend, native_bf16

    path, _, x = bert
    f32 = backend.compile(path, "cpu", {"precision": "f32", "threads": 1})
    assert any("inference precision f32 (read back)" in n for n in f32.notes), f32.notes
    assert "bf16" not in " ".join(f32.notes)  # no kernel ran in bf16
    ref = f32.run(x)[0]
    if native_bf16() is not None:
        pytest.skip(native_bf16())
    bf16 = backend.compile(path, "cpu", {"precision": "bf16", "threads": 1})
    assert any("inference precision bf16 (read back)" in n and "bf16×" in n for n in bf16.notes), bf16.notes
    got = bf16.run(x)[0]
    assert not np.array_equal(got, ref)  # a different arithmetic ran ...
    assert _cosine(got, ref) > 0.999  # ... close to f32


def test_nncf_int8_on_bert_runs_int8_kernels_on_openvino_with_close_outputs(bert: Any) -> None:
    from chipfit.backends.openvino import backend

    path, _, x = bert
    ref = backend.compile(path, "cpu", {"precision": "f32", "threads": 1}).run(x)[0]
    out, notes = _variant(bert, [{"name": "nncf_int8", "params": {"preset": "mixed", "samples": 8}}])
    assert any("int8 by NNCF" in n and "transformer" in n for n in notes), notes
    q = onnx.load(str(out), load_external_data=False)
    assert sum(n.op_type == "QuantizeLinear" for n in q.graph.node) >= 12  # 6 Linear per layer, 2 layers
    exe = backend.compile(out, "cpu", {"precision": "f32", "threads": 1})
    assert any("FullyConnected i8×12" in n for n in exe.notes), exe.notes
    assert _cosine(exe.run(x)[0], ref) > 0.99  # random weights: no outlier channels, int8 stays close

    kept, notes = _variant(
        bert, [{"name": "nncf_int8", "params": {"preset": "mixed", "keep_sensitive": True, "samples": 8}}]
    )
    # per layer: Q·Kᵀ, softmax·V and the feed-forward output projection (its input is the GELU's)
    assert any("kept in float by NNCF: 6 nodes" in n for n in notes), notes
    exe = backend.compile(kept, "cpu", {"precision": "f32", "threads": 1})
    assert any("FullyConnected f32×2, FullyConnected i8×10, MatMul f32×4" in n for n in exe.notes), exe.notes
    assert _cosine(exe.run(x)[0], ref) > 0.99


def _qdq_add_of_a_constant() -> onnx.ModelProto:
    """MatMul in QDQ form, then Add of a fake-quantized constant (QuantizeLinear → DequantizeLinear of a float
    bias), as ONNX Runtime's static quantizer writes for Add: OpenVINO 2026.4's AddTransformation throws on it
    ("Check 'index < m_inputs.size()' failed")."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.integers(-127, 127, (8, 8)).astype(np.int8), "w_q"),
        numpy_helper.from_array(np.float32(0.01), "w_s"),
        numpy_helper.from_array(np.int8(0), "zp"),
        numpy_helper.from_array(np.float32(0.02), "a_s"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "bias"),
        numpy_helper.from_array(np.float32(0.02), "b_s"),  # the bias within range: only rounding differs
    ]
    qdq = [("x", "a_s", "xd"), ("h", "a_s", "hd"), ("bias", "b_s", "bd")]
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_s", "zp"], ["w"])]
    for src, scale, dst in qdq:
        nodes.append(helper.make_node("QuantizeLinear", [src, scale, "zp"], [f"{dst}_q"]))
        nodes.append(helper.make_node("DequantizeLinear", [f"{dst}_q", scale, "zp"], [dst]))
    nodes.insert(3, helper.make_node("MatMul", ["xd", "w"], ["h"]))
    nodes.append(helper.make_node("Add", ["bd", "hd"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "qdq_add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_a_qdq_model_with_fake_quantized_constants_compiles_on_openvino(tmp_path: Path) -> None:
    import onnxruntime as ort

    from chipfit.backends.openvino import backend, bypass_constant_qdq

    model = _qdq_add_of_a_constant()
    path = tmp_path / "qdq.onnx"
    onnx.save_model(model, str(path))
    fixed = onnx.load(str(path))
    assert bypass_constant_qdq(fixed) == 1  # the bias pair; the activations' and the weight's stay
    assert [n.op_type for n in fixed.graph.node].count("QuantizeLinear") == 2
    exe = backend.compile(path, "cpu", {"precision": "f32", "threads": 1})
    assert any("1 QuantizeLinear/DequantizeLinear pairs on constants kept in float" in n for n in exe.notes)
    assert any("i8" in n for n in exe.notes), exe.notes  # the MatMul still runs int8
    x = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(exe.run({"x": x})[0], want, atol=0.011)  # the bias unrounded: within half a step


def test_onnx_runtime_static_qdq_of_bert_runs_on_openvino(bert: Any) -> None:
    import onnxruntime as ort

    from chipfit.backends.openvino import backend

    _, _, x = bert
    out, _ = _variant(bert, [{"name": "int8_static", "params": {"calibrate": "minmax", "per_channel": True}}])
    exe = backend.compile(out, "cpu", {"precision": "f32", "threads": 1})
    assert any("FullyConnected i8×12" in n for n in exe.notes), exe.notes
    want = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, x)[0]
    assert _cosine(exe.run(x)[0], want) > 0.999  # the same QDQ model, run by ONNX Runtime


def test_tvm_on_bert_imports_or_fails_with_the_converters_reason(bert: Any) -> None:
    pytest.importorskip("tvm")
    from chipfit.backends import backend_info
    from chipfit.backends.tvm import backend

    if not backend_info("tvm").available:
        pytest.skip(backend_info("tvm").reason or "tvm unavailable")
    path, _, x = bert
    try:
        exe = backend.compile(path, "cpu", {"threads": 1})
    except RuntimeError as exc:  # recorded as the candidate's failure: the stage and TVM's own reason
        text = str(exc)
        assert text.startswith("tvm backend: TVM") and "'bert.onnx'" in text and ": " in text.split("'bert.onnx'")[1]
        assert "broadcast_to expects" not in text  # the ConstantOfShape import failure is worked around
        return
    import onnxruntime as ort

    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, x)[0]
    np.testing.assert_allclose(exe.run(x)[0], want, rtol=1e-3, atol=1e-4)


def test_tvm_compiles_the_canonical_attention_form_of_a_bert_export(bert: Any) -> None:
    """TVM's variant of a transformer is the attention_canonical pass (checked against the original's outputs):
    its compiled module matches ONNX Runtime on the original export, padded rows included."""
    pytest.importorskip("tvm")
    import onnxruntime as ort

    from chipfit.backends import backend_info
    from chipfit.backends.tvm import backend
    from chipfit.model import load_model

    if not backend_info("tvm").available:
        pytest.skip(backend_info("tvm").reason or "tvm unavailable")
    path, _, x = bert
    (variant,) = backend.option_space(load_model(path), 1).variants
    assert [p["name"] for p in variant] == ["attention_canonical"]
    out, notes = _variant(bert, variant)
    assert any("attention_canonical: " in n and "masks rebuilt" in n for n in notes), notes
    exe = backend.compile(out, "cpu", {"threads": 1})
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, x)[0]
    np.testing.assert_allclose(exe.run(x)[0], want, rtol=1e-3, atol=1e-4)


def test_constant_of_shape_with_an_empty_shape_is_folded_to_a_scalar() -> None:
    """The TorchScript BERT export's pattern TVM 0.27's converter fails on (scalar ConstantOfShape)."""
    from chipfit.backends._tvm_onnx import fold_constant_of_shape

    shape = helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([], np.int64)))
    value = numpy_helper.from_array(np.array([2.0], np.float32))
    nodes = [shape, helper.make_node("ConstantOfShape", ["shape"], ["y"], value=value)]
    nodes.append(helper.make_node("Add", ["x", "y"], ["z"]))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert fold_constant_of_shape(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Constant", "Constant", "Add"]
    folded = numpy_helper.to_array(model.graph.node[1].attribute[0].t)
    assert folded.shape == () and folded.dtype == np.float32 and float(folded) == 2.0
    onnx.checker.check_model(model, full_check=True)
    import onnxruntime as ort

    got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": np.ones(2, np.float32)})[0]
    np.testing.assert_array_equal(got, [3.0, 3.0])
