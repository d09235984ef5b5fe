"""int8 dynamic quantization (ONNX Runtime's ``quantize_dynamic``): weights int8 ahead of time, activations
quantized at run time. The usual choice for transformers and RNNs.

Parameters: ``per_channel`` (one scale per output channel of each weight), ``reduce_range`` (7-bit weights:
avoids the u8·s8 saturation of AVX2/AVX-512 kernels on CPUs without VNNI; the space sets it from the CPU's
flags), ``exclude`` (nodes kept in fp32: the accuracy-aware search's lever), ``nodes`` (quantize only these:
how the search measures one node's sensitivity). Conv is left to static quantization: ConvInteger has no
fast CPU kernel in ONNX Runtime.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, ClassVar

from chipfit.passes._graph import is_large, load_graph, quantizable_nodes
from chipfit.passes.base import PassContext, PassResult

__all__ = ["OP_TYPES", "Int8Dynamic", "pass_"]

OP_TYPES = ("MatMul", "Attention", "LSTM", "Gather", "EmbedLayerNormalization")


class Int8Dynamic:
    name = "int8_dynamic"
    params: ClassVar[dict[str, tuple[Any, ...]]] = {
        "per_channel": (False, True),
        "reduce_range": (False, True),
        "weight_type": ("int8", "uint8"),
    }

    def quantizable(self, src: Path) -> list[str]:
        """The nodes this pass would quantize in ``src`` (names as ``prepare`` leaves them)."""
        return quantizable_nodes(load_graph(src), OP_TYPES, need_weight=True)

    def apply(self, src: Path, dst: Path, params: dict[str, Any], ctx: PassContext) -> PassResult:
        from chipfit.passes.quant_common import check_params, prepare

        check_params(self.name, params, self.params)
        targets = self.quantizable(src)
        if not targets:
            ops = sorted({n.op_type for n in load_graph(src).graph.node})
            return PassResult(False, [f"int8_dynamic: no {', '.join(OP_TYPES)} with weights (ops: {', '.join(ops)})"])
        with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
            prepared, notes = prepare(src, Path(tmp))
            self.quantize(prepared, dst, params, ctx)
        exclude = list(params.get("exclude", []))
        desc = "per-channel" if params.get("per_channel") else "per-tensor"
        rr = ", reduced range" if params.get("reduce_range") else ""
        notes.append(f"int8 dynamic quantization ({desc} weights{rr}) of {len(targets) - len(exclude)} nodes")
        if exclude:
            notes.append(f"kept in fp32: {', '.join(exclude)}")
        return PassResult(True, notes)

    def quantize(self, prepared: Path, dst: Path, params: dict[str, Any], ctx: PassContext) -> None:
        """Quantize a model ``prepare`` made ready (the accuracy-aware search calls this once per node)."""
        from onnxruntime.quantization import QuantType, quantize_dynamic

        from chipfit.passes.quant_common import quantize_error

        try:
            quantize_dynamic(
                prepared,
                dst,
                weight_type=QuantType.QUInt8 if params.get("weight_type") == "uint8" else QuantType.QInt8,
                per_channel=bool(params.get("per_channel", False)),
                reduce_range=bool(params.get("reduce_range", False)),
                op_types_to_quantize=list(OP_TYPES),
                # always by name: the quantizer otherwise also rewrites nodes outside OP_TYPES (e.g. a Gemm as
                # MatMul) that the accuracy-aware search could then neither rank nor keep in fp32
                nodes_to_quantize=list(params["nodes"]) if params.get("nodes") else self.quantizable(prepared),
                nodes_to_exclude=list(params.get("exclude", [])),
                use_external_data_format=is_large(prepared),
                extra_options={"DefaultTensorType": 1, "MatMulConstBOnly": True},  # 1 = FLOAT
            )
        except Exception as exc:
            raise quantize_error(self.name, exc) from exc


pass_ = Int8Dynamic()
