"""Each pass differentially: outputs before and after on the same inputs within a stated tolerance, the
structural change asserted, and a model it must not apply to."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from chipfit.passes import PassContext, get_pass
from conftest import make_mlp

DIGITS = Path(__file__).parents[1] / "examples" / "digits"


def _run(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, feeds)[0])


def _ops(path: Path) -> Counter[str]:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _calib(tmp_path: Path, name: str, x: np.ndarray) -> PassContext:
    folder = tmp_path / "calib"
    folder.mkdir(exist_ok=True)
    np.save(folder / f"{name}.npy", x)
    return PassContext(folder, "test", [name])


@pytest.fixture
def wide_mlp(tmp_path: Path) -> Path:
    return make_mlp(tmp_path / "wide.onnx", n_in=64, n_hidden=128, n_out=10)


def test_int8_dynamic_quantizes_matmuls_within_tolerance(wide_mlp: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(32, 64)).astype(np.float32)
    for pc in (False, True):
        dst = tmp_path / f"q{pc}.onnx"
        res = get_pass("int8_dynamic").apply(wide_mlp, dst, {"per_channel": pc, "reduce_range": True}, PassContext())
        assert res.applied and any("int8 dynamic" in n for n in res.notes)
        ops = _ops(dst)
        assert ops["MatMul"] == 0 and (ops["MatMulInteger"] + ops["DynamicQuantizeMatMul"]) == 2, ops
        out, ref = _run(dst, {"x": x}), _run(wide_mlp, {"x": x})
        # stated tolerance (random N(0,1) weights, saturated softmax): cosine ≥ 0.95, same argmax on ≥ 90%
        assert _cos(out, ref) > 0.95
        assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.9
        assert dst.stat().st_size < wide_mlp.stat().st_size / 2  # weights stored as int8


def test_int8_dynamic_exclude_keeps_a_node_fp32(wide_mlp: Path, tmp_path: Path) -> None:
    dst = tmp_path / "q.onnx"
    get_pass("int8_dynamic").apply(wide_mlp, dst, {"exclude": ["fc2"]}, PassContext())
    nodes = {n.name: n.op_type for n in onnx.load(str(dst)).graph.node}
    assert nodes["fc2"] == "MatMul" and "fc1" not in nodes


def test_int8_dynamic_does_not_apply_without_matmul(tmp_path: Path) -> None:
    res = get_pass("int8_dynamic").apply(DIGITS / "model.onnx", tmp_path / "q.onnx", {}, PassContext())
    assert not res.applied and "no MatMul" in res.notes[0] and not (tmp_path / "q.onnx").exists()


def test_int8_static_qdq_on_the_digits_cnn(tmp_path: Path) -> None:
    data = np.load(DIGITS / "eval.npz")
    x, y = data["image"], data["labels"]
    ctx = _calib(tmp_path, "image", x[:64])
    ref = _run(DIGITS / "model.onnx", {"image": x[64:]})
    for method, pc in (("minmax", True), ("entropy", False), ("percentile", False)):
        dst = tmp_path / f"{method}.onnx"
        res = get_pass("int8_static").apply(DIGITS / "model.onnx", dst, {"calibrate": method, "per_channel": pc}, ctx)
        assert res.applied and f"{method} calibration on 64 samples" in " ".join(res.notes)
        ops = _ops(dst)
        assert ops["QuantizeLinear"] >= 4 and ops["DequantizeLinear"] >= 8, ops
        if pc:
            dq = [n for n in onnx.load(str(dst)).graph.node if n.op_type == "DequantizeLinear"]
            assert any(a.name == "axis" for n in dq for a in n.attribute)  # per-channel weight scales
        out = _run(dst, {"image": x[64:]})
        # stated tolerance: the quantized CNN agrees with fp32 on ≥ 97% of held-out digits, accuracy within 2 points
        assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.97
        assert (out.argmax(1) == y[64:]).mean() >= (ref.argmax(1) == y[64:]).mean() - 0.02


def test_int8_static_needs_calibration_data_and_weights(tmp_path: Path, wide_mlp: Path) -> None:
    res = get_pass("int8_static").apply(DIGITS / "model.onnx", tmp_path / "a.onnx", {}, PassContext())
    assert not res.applied and "no calibration data" in res.notes[0]
    relu = helper.make_model(
        helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])],
            "relu",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    relu.ir_version = 8
    onnx.save(relu, tmp_path / "relu.onnx")
    ctx = _calib(tmp_path, "x", np.ones((16, 4), np.float32))
    res = get_pass("int8_static").apply(tmp_path / "relu.onnx", tmp_path / "b.onnx", {}, ctx)
    assert not res.applied and "no Conv, MatMul or Gemm" in res.notes[0]


def test_fp16_keeps_io_fp32(wide_mlp: Path, tmp_path: Path) -> None:
    dst = tmp_path / "h.onnx"
    res = get_pass("fp16").apply(wide_mlp, dst, {}, PassContext())
    assert res.applied
    m = onnx.load(str(dst))
    assert {i.data_type for i in m.graph.initializer} == {TensorProto.FLOAT16}
    assert m.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert m.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    x = np.random.default_rng(0).normal(size=(8, 64)).astype(np.float32)
    out, ref = _run(dst, {"x": x}), _run(wide_mlp, {"x": x})
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=2e-3)  # stated tolerance: fp16 rounding of weights and sums


def test_fp16_does_not_apply_to_an_integer_model(tmp_path: Path) -> None:
    g = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])],
        "ints",
        [helper.make_tensor_value_info("x", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, ["n"])],
        [numpy_helper.from_array(np.array([1], np.int64), "one")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "ints.onnx")
    res = get_pass("fp16").apply(tmp_path / "ints.onnx", tmp_path / "h.onnx", {}, PassContext())
    assert not res.applied and "no fp32" in res.notes[0]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    pytest.importorskip("torch")
    from chipfit.testing.models import bert_inputs, bert_like, export_onnx

    folder = tmp_path_factory.mktemp("bert")
    feeds = bert_inputs(4, seq=16, vocab=50)
    model = bert_like(layers=2, hidden=32, heads=4, vocab=50, seq=16, classes=3)
    return export_onnx(model, feeds, folder / "bert.onnx"), feeds


def test_transformer_fusion_fuses_attention_layernorm_gelu(tiny_bert, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src, feeds = tiny_bert
    dst = tmp_path / "fused.onnx"
    res = get_pass("transformer_fusion").apply(src, dst, {}, PassContext())
    assert res.applied and "Attention×2" in res.notes[0]
    ops = _ops(dst)
    assert ops["Attention"] == 2 and ops["SkipLayerNormalization"] == 4 and ops["Softmax"] == 0, ops
    assert ops["BiasGelu"] + ops["Gelu"] + ops["FastGelu"] == 2
    np.testing.assert_allclose(_run(dst, feeds), _run(src, feeds), rtol=1e-4, atol=1e-4)


def test_transformer_fusion_then_int8_dynamic(tiny_bert, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src, feeds = tiny_bert
    get_pass("transformer_fusion").apply(src, tmp_path / "f.onnx", {}, PassContext())
    res = get_pass("int8_dynamic").apply(tmp_path / "f.onnx", tmp_path / "q.onnx", {"per_channel": True}, PassContext())
    assert res.applied and _ops(tmp_path / "q.onnx")["QAttention"] == 2
    assert _cos(_run(tmp_path / "q.onnx", feeds), _run(src, feeds)) > 0.99


def test_transformer_fusion_does_not_apply_to_an_mlp(wide_mlp: Path, tmp_path: Path) -> None:
    res = get_pass("transformer_fusion").apply(wide_mlp, tmp_path / "f.onnx", {}, PassContext())
    assert not res.applied and "no attention" in res.notes[0]


def test_quantizing_a_model_with_stale_shapes(wide_mlp: Path, tmp_path: Path) -> None:
    """Exporters leave value_info that contradicts shape inference; ORT's quantizer alone fails on it."""
    from onnxruntime.quantization import quantize_dynamic

    m = onnx.load(str(wide_mlp))
    m.graph.value_info.append(helper.make_tensor_value_info("h1", TensorProto.FLOAT, [3, 7]))
    stale = tmp_path / "stale.onnx"
    onnx.save(m, stale)
    with pytest.raises(Exception, match=r"differ|Incompatible|mismatch|Inferred shape"):
        quantize_dynamic(stale, tmp_path / "raw.onnx")
    res = get_pass("int8_dynamic").apply(stale, tmp_path / "q.onnx", {}, PassContext())
    assert res.applied
    x = np.random.default_rng(0).normal(size=(4, 64)).astype(np.float32)
    assert _cos(_run(tmp_path / "q.onnx", {"x": x}), _run(wide_mlp, {"x": x})) > 0.999


def test_quantizing_a_torch_dynamo_export(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    import chipfit

    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4)).eval()
    model = chipfit.load_model(net, example_inputs=(torch.randn(2, 5, 16),))  # (batch, tokens, features)
    res = get_pass("int8_dynamic").apply(model.path, tmp_path / "q.onnx", {"per_channel": True}, PassContext())
    assert res.applied
    x = np.random.default_rng(0).normal(size=(8, 5, 16)).astype(np.float32)
    name = model.inputs[0].name
    assert _cos(_run(tmp_path / "q.onnx", {name: x}), _run(model.path, {name: x})) > 0.98  # 16-wide: coarse


def test_bad_parameters_are_rejected(wide_mlp: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown parameter 'bits'"):
        get_pass("int8_dynamic").apply(wide_mlp, tmp_path / "q.onnx", {"bits": 4}, PassContext())
    with pytest.raises(ValueError, match="'calibrate' must be one of"):
        get_pass("int8_static").apply(wide_mlp, tmp_path / "q.onnx", {"calibrate": "mean"}, PassContext())
    with pytest.raises(ValueError, match="'samples' must be a positive integer; got 0"):
        get_pass("int8_static").apply(wide_mlp, tmp_path / "q.onnx", {"samples": 0}, PassContext())
    with pytest.raises(ValueError, match="'exclude' must be a list of node names"):
        get_pass("int8_dynamic").apply(wide_mlp, tmp_path / "q.onnx", {"exclude": "fc1"}, PassContext())


def test_preparing_for_quantization_does_not_import_torch(tmp_path: Path) -> None:
    """onnxruntime.tools' __init__ imports torch when installed (~3 s per int8 worker); prepare skips it."""
    import subprocess
    import sys

    from chipfit.testing.reference_models import mlp

    path = mlp().save(tmp_path)
    code = (
        "import sys, tempfile; from pathlib import Path; from chipfit.passes.quant_common import prepare; "
        f"prepare(Path({str(path)!r}), Path(tempfile.mkdtemp())); print('torch' in sys.modules)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "False"
