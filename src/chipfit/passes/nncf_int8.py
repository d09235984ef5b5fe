"""int8 through NNCF, OpenVINO's own post-training quantizer (``pip install 'chipfit[openvino]'``).

``nncf.quantize`` runs on the ONNX model with the calibration split of the user's data (at most ``samples``
rows, one per call: NNCF does not support batches above 1 for transformers) and writes a QDQ ONNX model that
OpenVINO compiles to int8 kernels. (ONNX Runtime runs it with the same outputs, but on all-MiniLM-L6-v2 no
faster than its fp32 session, so it is a variant of the OpenVINO backend only.) Transformers (attention in the
graph) are quantized with ``ModelType.TRANSFORMER``: NNCF's transformer patterns, and SmoothQuant on the
MatMuls. ``preset`` mixed (symmetric weights, asymmetric activations) or performance (symmetric both).

``keep_sensitive`` keeps the layers int8 hurts most in float: the feed-forward output projections (their input
is the GELU's output, lopsided with rare large values: on all-MiniLM-L6-v2 keeping these 6 of 36 Linear layers
in float raised the cosine to the fp32 output from 0.989 to 0.998) and the attention's activation × activation
MatMuls (Q·Kᵀ and softmax·V). With OpenVINO's bf16 precision the kept layers run in bf16.

``exclude`` keeps named nodes in float and ``nodes`` quantizes only the named ones (the accuracy-aware
search's levers). Without calibration data the pass does not apply. nncf is imported in this module only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from chipfit.passes._graph import is_large, load_graph, name_nodes, quantizable_nodes
from chipfit.passes.base import PassContext, PassResult

__all__ = ["OP_TYPES", "NncfInt8", "attention_matmuls", "ffn_output_matmuls", "pass_"]

OP_TYPES = ("Conv", "ConvTranspose", "MatMul", "Gemm")  # what NNCF quantizes (inputs and weights)
MIN_OPSET = 10  # QuantizeLinear; NNCF needs 13 for per-channel weights and warns below it
INSTALL = "pip install 'chipfit[openvino]'"
# calibration rows (batch 1): NNCF's statistics pass is linear in them (on all-MiniLM-L6-v2, 2 busy cores: 45 s
# for 32, 118 s for 128, with the same cosine for keep_sensitive: 0.9983 and 0.9985)
DEFAULT_SAMPLES = 64


def attention_matmuls(path: Path) -> list[str]:
    """MatMuls with no constant input: in a transformer, the attention's Q·Kᵀ and softmax·V."""
    model = load_graph(path)
    inits = {i.name for i in model.graph.initializer}
    consts = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and not any(i in inits | consts for i in n.input)]


def ffn_output_matmuls(path: Path, hops: int = 4) -> list[str]:
    """MatMuls with a weight whose input comes from a GELU (``Gelu``/``FastGelu``, or the ``Erf``/``Tanh`` of its
    exported formula within ``hops`` nodes): a transformer's feed-forward output projections."""
    model = load_graph(path)
    inits = {i.name for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    out = []
    for n in model.graph.node:
        if n.op_type != "MatMul" or not any(i in inits for i in n.input):
            continue
        frontier, seen = [i for i in n.input if i in producer], 0
        while frontier and seen < hops:
            nodes = [producer[i] for i in frontier]
            if any(p.op_type in ("Gelu", "FastGelu", "BiasGelu", "Erf", "Tanh") for p in nodes):
                out.append(n.name)
                break
            frontier = [i for p in nodes for i in p.input if i in producer and i not in inits]
            seen += 1
    return out


def _has_attention(path: Path) -> bool:
    """A Softmax and activation × activation MatMuls: attention, also in exports whose softmax→MatMul path has
    ops the fusion's detector does not walk through (e.g. the ``Where`` of SDPA exports)."""
    return any(n.op_type == "Softmax" for n in load_graph(path).graph.node) and bool(attention_matmuls(path))


def _opset(path: Path) -> int:
    model = load_graph(path)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


class NncfInt8:
    name = "nncf_int8"
    reads_calibration = True
    params: ClassVar[dict[str, tuple[Any, ...]]] = {
        "preset": ("mixed", "performance"),
        "keep_sensitive": (False, True),
        "samples": (),  # any positive integer; bounded by the calibration data
    }

    def quantizable(self, src: Path) -> list[str]:
        model = load_graph(src)
        name_nodes(model)  # the names ``apply`` gives unnamed nodes, so that they can be excluded by name
        return [n.name for n in model.graph.node if n.op_type in OP_TYPES]

    def apply(self, src: Path, dst: Path, params: dict[str, Any], ctx: PassContext) -> PassResult:
        from chipfit.passes.quant_common import check_params

        check_params(self.name, params, self.params)
        if int(params.get("samples", DEFAULT_SAMPLES)) < 1:
            raise ValueError(f"nncf_int8: 'samples' must be a positive integer; got {params['samples']}")
        if not quantizable_nodes(load_graph(src), OP_TYPES):
            return PassResult(False, ["nncf_int8: no Conv, MatMul or Gemm to quantize"])
        opset = _opset(src)
        if opset < MIN_OPSET:
            return PassResult(False, [f"nncf_int8: the model's opset {opset} is below {MIN_OPSET} (re-export it)"])
        if ctx.calib_dir is None or not Path(ctx.calib_dir).exists():
            return PassResult(False, ["nncf_int8: no calibration data (give --data with enough samples)"])
        used, notes = self.quantize(src, dst, params, ctx)
        if used == 0:
            return PassResult(False, ["nncf_int8: no calibration samples"])
        return PassResult(True, notes)

    def quantize(self, prepared: Path, dst: Path, params: dict[str, Any], ctx: PassContext) -> tuple[int, list[str]]:
        """Calibrate on at most ``samples`` rows and write the QDQ model; returns (samples used, notes)."""
        import onnx

        from chipfit.data import Dataset
        from chipfit.passes.transformer_fusion import is_transformer

        data = Dataset.load_saved(Path(str(ctx.calib_dir)), ctx.input_names).inputs
        first = load_graph(prepared).graph.input[0].type.tensor_type.shape.dim
        batch = first[0].dim_value if first and first[0].HasField("dim_value") else 1
        rows = min(len(next(iter(data.values()))), int(params.get("samples", DEFAULT_SAMPLES))) // batch
        if rows == 0:
            return 0, []
        transformer = is_transformer(prepared) or _has_attention(prepared)
        model = onnx.load(str(prepared))
        name_nodes(model)
        ignored = self._ignored(model, prepared, params)
        quantized = _run_nncf(model, data, batch, rows, transformer, str(params.get("preset", "mixed")), ignored)
        large = is_large(prepared)
        onnx.save_model(quantized, str(dst), save_as_external_data=large, location=f"{dst.name}.data")
        kind = "transformer (SmoothQuant on MatMuls)" if transformer else "default"
        notes = [
            f"int8 by NNCF ({params.get('preset', 'mixed')} preset, model type {kind}, "
            f"calibrated on {rows * batch} samples): QDQ model"
        ]
        if ignored:
            notes.append(
                f"kept in float by NNCF: {len(ignored)} nodes ({', '.join(ignored[:6])}{' …' * (len(ignored) > 6)})"
            )
        return rows * batch, notes

    def _ignored(self, model: Any, path: Path, params: dict[str, Any]) -> list[str]:
        names = [n.name for n in model.graph.node if n.op_type in OP_TYPES]
        keep = set(params.get("exclude", []))
        if params.get("keep_sensitive"):
            keep |= (set(attention_matmuls(path)) | set(ffn_output_matmuls(path))) & set(names)
        if params.get("nodes"):
            keep |= set(names) - set(params["nodes"])
        return [n for n in names if n in keep]


def _run_nncf(
    model: Any, data: dict[str, Any], batch: int, rows: int, transformer: bool, preset: str, ignored: list[str]
) -> Any:
    import logging
    import warnings

    try:
        import nncf
    except ImportError as exc:
        raise RuntimeError(f"nncf_int8: NNCF is not installed: {INSTALL}") from exc
    import numpy as np

    nncf.set_log_level(logging.ERROR)
    samples = [{k: np.ascontiguousarray(v[i * batch : (i + 1) * batch]) for k, v in data.items()} for i in range(rows)]
    kwargs: dict[str, Any] = {
        "preset": nncf.QuantizationPreset.MIXED if preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
        "subset_size": rows,
    }
    if transformer:
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    if ignored:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=ignored, validate=False)
    try:
        with warnings.catch_warnings():  # statistics of masked (-inf) attention scores
            warnings.simplefilter("ignore", RuntimeWarning)
            return nncf.quantize(model, nncf.Dataset(samples), **kwargs)
    except Exception as exc:
        raise RuntimeError(f"nncf_int8: NNCF could not quantize this model: {type(exc).__name__}: {exc}"[:800]) from exc


pass_ = NncfInt8()
