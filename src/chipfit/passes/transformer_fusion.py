"""Transformer fusion: attention, LayerNorm (with the residual Add: SkipLayerNormalization), GELU (+ bias) and
embedding subgraphs rewritten into single fused ONNX Runtime kernels.

Detected, not asked for: the pass applies when the graph has attention (a Softmax between two MatMuls, SDPA's
NaN-guarded form, or an already fused attention op) and does not apply otherwise. Three ways are tried, in
order, until one fuses every attention block and keeps the outputs equal (fp32 tolerance, checked by running
both models on the same inputs, padded like real text):

1. ONNX Runtime's transformer optimizer (``optimize_model``) on the graph as exported;
2. the same after ``_attention.canonicalize`` (Hugging Face ``transformers`` 5 TorchScript exports: the
   padding mask, SDPA's NaN guard and Q/K scaling rewritten to the classic BERT form), heads and hidden size
   read from the graph;
3. onnxscript's ``optimize_for_ort`` (the path for dynamo exports, which ONNX Runtime's optimizer does not
   target).

A way that fuses less attention, or whose outputs differ, is not used, and the notes say why; when none fuses
anything, the pass does not apply.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx

from chipfit.passes._graph import attention_softmaxes, is_large, load_graph
from chipfit.passes.base import PassContext, PassResult

__all__ = ["TransformerFusion", "differs_from", "fused_counts", "is_transformer", "pass_", "sample_feeds"]

_ATTENTION_OPS = ("Attention", "MultiHeadAttention", "QAttention", "PackedAttention", "GroupQueryAttention")
_FUSED_OPS = (*_ATTENTION_OPS, "SkipLayerNormalization", "EmbedLayerNormalization", "BiasGelu", "FastGelu")
RTOL, ATOL = 1e-3, 1e-4


def is_transformer(path: Path) -> bool:
    return attention_softmaxes(load_graph(path)) > 0


def fused_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each fused ONNX Runtime op type the graph has."""
    out: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type in _FUSED_OPS:
            out[n.op_type] = out.get(n.op_type, 0) + 1
    return out


def _attention_count(counts: dict[str, int]) -> int:
    return sum(v for k, v in counts.items() if k in _ATTENTION_OPS)


def sample_feeds(model: onnx.ModelProto, batch: int = 2, seq: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for a differential check: token ids within every embedding table they index, a padding mask
    (one row full, one padded), other integers 0, floats standard normal; dynamic dims ``batch`` then ``seq``."""
    rng = np.random.default_rng(seed)
    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    feeds = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        t = inp.type.tensor_type
        dims = t.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") else (batch if k == 0 else seq) for k, d in enumerate(dims)]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        elif "mask" in inp.name.lower():
            mask = np.ones(shape, dtype=dtype)
            if len(shape) == 2 and shape[0] > 1:
                mask[1:, max(1, shape[1] // 2) :] = 0
            feeds[inp.name] = mask
        else:
            tables = [
                inits[n.input[0]].dims[0]
                for n in consumers.get(inp.name, [])
                if n.op_type == "Gather" and n.input[0] in inits and n.input[1] == inp.name
            ]
            high = min(tables) if tables else 1
            feeds[inp.name] = rng.integers(min(3, high - 1), high, size=shape).astype(dtype)
    return feeds


def _outputs(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return list(session.run(None, {k: v for k, v in feeds.items() if k in names}))


def _differs(reference: list[np.ndarray], path: Path, feeds: dict[str, np.ndarray]) -> str | None:
    """Why ``path``'s outputs are not those of the reference (None when they match within RTOL/ATOL)."""
    try:
        got = _outputs(path, feeds)
    except Exception as exc:
        return f"ONNX Runtime could not run it ({type(exc).__name__}: {str(exc)[:160]})"
    for k, (a, b) in enumerate(zip(reference, got, strict=False)):
        if a.shape != b.shape or not np.allclose(a, b, rtol=RTOL, atol=ATOL):
            diff = float(np.max(np.abs(a - b))) if a.shape == b.shape else float("nan")
            return f"output {k} differs from the original (max |Δ| {diff:.3g}, shape {a.shape} vs {b.shape})"
    return None


def differs_from(original: Path, path: Path, feeds: dict[str, np.ndarray]) -> str | None:
    """Why ``path``'s outputs on ``feeds`` are not ``original``'s (None when they match within RTOL/ATOL)."""
    return _differs(_outputs(original, feeds), path, feeds)


def _ort(src: Path, dst: Path, params: dict[str, Any], heads: int, hidden: int) -> None:
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    model_type = params.get("model_type", "bert")
    options = FusionOptions(model_type)
    options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = bool(params.get("skip_layer_norm", True))
    optimized = optimize_model(
        str(src), model_type=model_type, num_heads=heads, hidden_size=hidden, optimization_options=options, opt_level=0
    )
    optimized.save_model_to_file(str(dst), use_external_data_format=is_large(src))


def _ort_plain(src: Path, dst: Path, tmp: Path, params: dict[str, Any]) -> list[str]:
    _ort(src, dst, params, 0, 0)
    return []


def _ort_canonical(src: Path, dst: Path, tmp: Path, params: dict[str, Any]) -> list[str]:
    from chipfit.passes._attention import canonicalize, heads_and_hidden

    model = onnx.load(str(src))
    notes = canonicalize(model)
    heads, hidden = heads_and_hidden(model)
    canon = tmp / "canonical.onnx"
    onnx.save_model(model, str(canon), save_as_external_data=is_large(src), location="canonical.onnx.data")
    _ort(canon, dst, params, heads, hidden)
    return [*notes, f"heads {heads}, hidden {hidden} read from the graph"] if heads else notes


def _onnxscript(src: Path, dst: Path, tmp: Path, params: dict[str, Any]) -> list[str]:
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    model, _stats = optimize_for_ort(ir.load(str(src)))
    ir.save(model, str(dst), external_data="model.onnx.data" if is_large(src) else None)
    return ["onnxscript's fusions take no skip_layer_norm parameter: ignored"] if "skip_layer_norm" in params else []


_WAYS: tuple[tuple[str, Callable[[Path, Path, Path, dict[str, Any]], list[str]]], ...] = (
    ("ONNX Runtime's optimizer", _ort_plain),
    ("ONNX Runtime's optimizer on the canonicalized attention", _ort_canonical),
    ("onnxscript's optimize_for_ort", _onnxscript),
)


class TransformerFusion:
    name = "transformer_fusion"
    params: ClassVar[dict[str, tuple[Any, ...]]] = {
        "model_type": ("bert", "gpt2", "bart", "t5", "vit"),
        "skip_layer_norm": (True, False),  # residual Add + LayerNorm as one SkipLayerNormalization kernel
    }

    def apply(self, src: Path, dst: Path, params: dict[str, Any], ctx: PassContext) -> PassResult:
        model_type = params.get("model_type", "bert")
        for key, value in params.items():
            if key not in self.params or value not in self.params[key]:
                allowed = "; ".join(f"{k}: {v}" for k, v in self.params.items())
                raise ValueError(f"transformer_fusion: unknown parameter or value {key}={value!r}; allowed: {allowed}")
        graph = load_graph(src)
        blocks = attention_softmaxes(graph)
        if not blocks:
            return PassResult(False, ["transformer_fusion: no attention (MatMul → Softmax → MatMul) in the graph"])
        already = _attention_count(fused_counts(graph))
        if already >= blocks:
            return PassResult(False, [f"transformer_fusion: attention is already fused ({already} fused ops)"])
        feeds = sample_feeds(graph)
        reference = _outputs(src, feeds)
        tried: list[str] = []
        best: tuple[int, int, Path, str, list[str]] | None = None  # attention, all fused, path, what, notes
        with tempfile.TemporaryDirectory(dir=dst.parent) as tmp_dir:
            tmp = Path(tmp_dir)
            for k, (label, way) in enumerate(_WAYS):
                out = tmp / f"way{k}" / "model.onnx"
                out.parent.mkdir()
                quiet = logging.root.manager.disable  # the optimizers log every pattern they do not match
                logging.disable(logging.WARNING)
                try:
                    notes = way(src, out, tmp, {**params, "model_type": model_type})
                except Exception as exc:
                    tried.append(f"{label} failed ({type(exc).__name__}: {str(exc)[:160]})")
                    continue
                finally:
                    logging.disable(quiet)
                counts = fused_counts(load_graph(out))
                attention, total = _attention_count(counts) - already, sum(counts.values())
                why = _differs(reference, out, feeds)
                if why:
                    tried.append(f"{label}: not used, {why}")
                    continue
                text = ", ".join(f"{op}×{v}" for op, v in sorted(counts.items())) or "nothing"
                tried.append(f"{label}: fused {text} ({attention} of {blocks} attention blocks)")
                if best is None or (attention, total) > best[:2]:
                    best = (attention, total, out, tried[-1], notes)
                if attention >= blocks:
                    break
            if best is None or best[1] == 0:
                return PassResult(False, ["transformer_fusion: nothing could be fused", *tried])
            attention, _, out, label, notes = best
            from chipfit.onnx_files import onnx_files

            for f in onnx_files(out):
                f.replace(dst if f == out else dst.parent / f.name)
        result = [f"transformer fusion ({model_type}), {label}", *notes]
        if attention < blocks:
            result.append(
                f"attention fused in {attention} of {blocks} blocks (an export pattern no optimizer matched); "
                f"tried: {'; '.join(tried)}"
            )
        return PassResult(True, result)


pass_ = TransformerFusion()
