"""The variant space on real Hugging Face encoders (BERT, DistilBERT, RoBERTa built from ``transformers`` configs
with random weights, exported by TorchScript and dynamo): transformer fusion, static int8 calibrated through a
padding mask, int8 with and without fusion in the space, and mixed precision from an int8 candidate that misses
the bound."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from chipfit.passes import PassContext, get_pass

hf = pytest.importorskip("chipfit.testing.hf_models")
pytest.importorskip("transformers")

SEQ = 32


def _run(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return np.asarray(sess.run(None, {k: v for k, v in feeds.items() if k in names})[0])


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-sample cosine (chipfit's fidelity metric)."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.mean(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


class Exports:
    """Each family (2 layers, hidden 64, default sdpa attention) by each exporter, exported once when first asked."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.paths = folder, {}  # type: ignore[var-annotated]

    def __getitem__(self, key: tuple[str, str]) -> Path:
        if key not in self.paths:
            family, exporter = key
            path = self.folder / f"{family}-{exporter}.onnx"
            module = hf.hf_encoder(family)
            self.paths[key] = hf.export_hf(module, hf.hf_inputs(2, seq=SEQ), path, dynamo=exporter == "dynamo")
        return self.paths[key]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Exports:
    return Exports(tmp_path_factory.mktemp("hf"))


# the dynamo exporter takes ~3 s a model: BERT in every run, the other families with the benchmarks
_SLOW = pytest.mark.bench


@pytest.mark.parametrize(
    ("family", "exporter"),
    [
        ("bert", "torchscript"),
        ("distilbert", "torchscript"),
        ("roberta", "torchscript"),
        ("bert", "dynamo"),
        pytest.param("distilbert", "dynamo", marks=_SLOW),
        pytest.param("roberta", "dynamo", marks=_SLOW),
    ],
)
def test_fusion_fuses_attention_in_hf_exports(exports, family: str, exporter: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = exports[family, exporter]
    dst = tmp_path / "model.onnx"
    res = get_pass("transformer_fusion").apply(src, dst, {}, PassContext())
    assert res.applied, res.notes
    ops = Counter(n.op_type for n in onnx.load(str(dst)).graph.node)
    assert ops["Attention"] + ops["MultiHeadAttention"] == 2, (ops, res.notes)  # one per layer
    assert ops["Softmax"] == 0 and ops["SkipLayerNormalization"] >= 2, ops
    assert "2 of 2 attention blocks" in res.notes[0]
    feeds = hf.hf_inputs(4, seq=SEQ, seed=3)  # other inputs than the pass checked with, padded rows included
    np.testing.assert_allclose(_run(dst, feeds), _run(src, feeds), rtol=1e-3, atol=1e-4)
    again = get_pass("transformer_fusion").apply(dst, tmp_path / "again.onnx", {}, PassContext())
    assert not again.applied and "already fused" in again.notes[0]


def _toy_attention(path: Path) -> Path:
    """Attention with no projection biases, LayerNorm or mask: a pattern no optimizer fuses."""
    rng = np.random.default_rng(0)
    w = {n: numpy_helper.from_array(rng.normal(size=(16, 16)).astype(np.float32), n) for n in ("wq", "wk", "wv")}
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("MatMul", ["x", "wv"], ["v"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Softmax", ["s"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "toy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 8, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 8, 16])],
        list(w.values()),
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_fusion_says_why_when_nothing_fuses(tmp_path: Path) -> None:
    src = _toy_attention(tmp_path / "toy.onnx")
    res = get_pass("transformer_fusion").apply(src, tmp_path / "out.onnx", {}, PassContext())
    assert not res.applied
    assert "nothing could be fused" in res.notes[0]
    assert len(res.notes) == 4 and all("0 of 1 attention blocks" in n or "not used" in n for n in res.notes[1:])


@pytest.mark.parametrize(
    ("method", "activations"), [("minmax", "int8"), ("entropy", "int8"), ("percentile", "int8"), ("minmax", "uint8")]
)
def test_static_int8_calibrates_through_the_padding_mask(
    exports, method: str, activations: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    src = exports["bert", "torchscript"]
    calib = hf.hf_inputs(16, seq=SEQ, seed=1)  # padded rows: the mask's float-min values reach the scores
    folder = tmp_path / "calib"
    folder.mkdir()
    for name, arr in calib.items():
        np.save(folder / f"{name}.npy", arr)
    ctx = PassContext(folder, f"calib-{method}", list(calib))
    dst = tmp_path / "q.onnx"
    params = {"calibrate": method, "per_channel": True, "samples": 16, "activation_type": activations}
    res = get_pass("int8_static").apply(src, dst, params, ctx)
    assert res.applied, res.notes
    proto = onnx.load(str(dst))
    scales = [numpy_helper.to_array(i) for i in proto.graph.initializer if i.name.endswith("_scale")]
    assert scales and all(np.isfinite(s).all() and (s > 0).all() for s in scales)
    ops = Counter(n.op_type for n in proto.graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["Softmax"] == 2
    zero_points = [i for i in proto.graph.initializer if i.name.endswith("_zero_point")]
    want = TensorProto.UINT8 if activations == "uint8" else TensorProto.INT8
    assert any(z.data_type == want for z in zero_points)
    feeds = hf.hf_inputs(8, seq=SEQ, seed=2)
    # random weights, int8 activations and weights: cosine ≥ 0.98 (the unrestricted quantizer gave ~0.4 on a
    # real encoder, or failed on the mask's non-finite range)
    assert _cos(_run(dst, feeds), _run(src, feeds)) >= 0.98


def test_space_has_int8_with_and_without_fusion(exports) -> None:  # type: ignore[no-untyped-def]
    from chipfit.backends.onnxruntime import precision_variants

    variants, _ = precision_variants(exports["bert", "torchscript"])
    chains = [tuple(p["name"] for p in v) for v in variants]
    for quant in ("int8_dynamic", "int8_static"):
        assert ("transformer_fusion", quant, "ort_graph_opt") in chains
        assert (quant, "ort_graph_opt") in chains
    assert ("transformer_fusion", "ort_graph_opt") in chains


def test_mixed_precision_starts_from_int8_missing_the_bound_even_when_bf16_is_faster() -> None:
    """int8 misses --min-fidelity, a bf16 candidate is feasible and faster than it, fp32 is slower: the int8
    candidate is still the base (int8 with its sensitive nodes in fp32 can beat bf16); when no fp32 candidate is
    slower than the int8 one, there is nothing to start from."""
    from chipfit.measure.measurement import Measurement
    from chipfit.search.mixed_precision import MixedPrecision, is_fp32
    from chipfit.search.select import CandidateResult
    from chipfit.search.space import Candidate
    from chipfit.spec import Spec

    def result(c: Candidate, p50: float, fidelity: float) -> CandidateResult:
        return CandidateResult(c, Measurement("ok", {"p50_ms": p50, "fidelity": fidelity, "samples": 50}))

    ref = Candidate("onnxruntime", (), {}, "cpu", 1, reference=True)
    fused = Candidate("onnxruntime", ({"name": "transformer_fusion", "params": {}},), {}, "cpu", 1)
    int8 = Candidate("onnxruntime", ({"name": "int8_dynamic", "params": {"per_channel": True}},), {}, "cpu", 1)
    bf16 = Candidate("openvino", (), {"hint": "latency", "precision": "bf16", "threads": 2}, "cpu", 1)
    assert is_fp32(ref) and is_fp32(fused) and not is_fp32(int8) and not is_fp32(bf16)
    spec = Spec(min_fidelity=0.99)
    mp = MixedPrecision(None, spec, deadline=None)
    results = [result(ref, 20.0, 1.0), result(fused, 18.0, 1.0), result(int8, 9.0, 0.986), result(bf16, 8.0, 0.999)]
    from chipfit.search.select import evaluate

    evaluate(results, spec)
    assert [r.feasible for r in results] == [True, True, False, True]
    base = mp._base(results)
    assert base is not None and base.candidate is int8
    slow_int8 = [result(ref, 20.0, 1.0), result(fused, 8.0, 1.0), result(int8, 9.0, 0.986)]
    evaluate(slow_int8, spec)
    assert mp._base(slow_int8) is None


def test_transformers_run_with_denormals_flushed_and_the_plain_session_swept(exports) -> None:  # type: ignore[no-untyped-def]
    from chipfit.backends.onnxruntime import backend, session_options
    from chipfit.model import load_model

    opts = backend.option_space(load_model(exports["bert", "torchscript"]), 2)
    assert opts.options[0]["denormal_as_zero"] is True
    assert any("denormal_as_zero" not in o for o in opts.options[opts.primary :])
    so = session_options(opts.options[0])
    assert so.get_session_config_entry("session.set_denormal_as_zero") == "1"
