"""int8 static quantization in QDQ format (ONNX Runtime's ``quantize_static``), calibrated on the user's data.

Activation ranges come from a bounded number of calibration samples (``samples``, default 128) taken from
the calibration split of the user's data, ``calibrate`` = minmax | entropy | percentile. Signed int8 for
activations and weights by default (S8S8, ONNX Runtime's recommended default for QDQ, what TensorRT reads),
or ``activation_type="uint8"``: asymmetric u8 activations (U8S8, the fast path of x86 CPU kernels: S8S8 QDQ
ran slower than fp32 on a BERT-family encoder with ONNX Runtime 1.32); ``per_channel`` weight scales;
``exclude`` keeps nodes in fp32 and ``nodes`` quantizes only the named ones (the accuracy-aware search's
levers). Without calibration data the pass does not apply.

On transformers (attention detected) only the MatMuls with constant weights are quantized, so calibration
never sees the attention mask (-inf / float-min values: "supplied range of [-inf, inf] is not finite" for
Entropy and Percentile, and a MinMax range that wipes out every other value), the pre-Softmax Add, the
Softmax, LayerNorm or the residual Adds; those stay fp32. Their activations are quantized asymmetrically
(GELU outputs are mostly ≥ -0.17: a symmetric range would waste half the codes); Q·Kᵀ and P·V, whose
both operands are activations, stay fp32 too.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, ClassVar

from chipfit.passes._graph import attention_softmaxes, is_large, load_graph, quantizable_nodes
from chipfit.passes.base import PassContext, PassResult

__all__ = ["OP_TYPES", "Int8Static", "pass_"]

OP_TYPES = ("Conv", "ConvTranspose", "MatMul", "Gemm")  # the compute ops; QDQ propagates around the rest
_OTHER_OPS = ("Relu", "Clip", "MaxPool", "AveragePool", "Add", "Mul", "Reshape", "Flatten", "Transpose")
_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


def _flush_every(batches: int) -> int:
    """Flush collected activations every few batches (bounded memory). ONNX Runtime 1.31 then raises "No data
    is collected" when the batch count is a multiple of the interval, so pick an interval that does not divide it."""
    return next(k for k in (4, 3, 5, 7, 11, 13) if batches % k)


class Int8Static:
    name = "int8_static"
    reads_calibration = True
    params: ClassVar[dict[str, tuple[Any, ...]]] = {
        "calibrate": tuple(_METHODS),
        "per_channel": (False, True),
        "samples": (),  # any positive integer
        # int8: symmetric S8S8 (what TensorRT reads); uint8: asymmetric u8 activations, the fast x86 CPU path
        # (ONNX Runtime 1.32 on a VNNI/AMX CPU ran a BERT-family encoder 2× faster in U8S8 than in S8S8)
        "activation_type": ("int8", "uint8"),
    }

    def quantizable(self, src: Path) -> list[str]:
        return quantizable_nodes(load_graph(src), OP_TYPES, need_weight=True)

    def apply(self, src: Path, dst: Path, params: dict[str, Any], ctx: PassContext) -> PassResult:
        from chipfit.passes.quant_common import check_params, prepare

        check_params(self.name, params, self.params)
        if int(params.get("samples", 128)) < 1:
            raise ValueError(f"int8_static: 'samples' must be a positive integer; got {params['samples']}")
        targets = self.quantizable(src)
        if not targets:
            return PassResult(False, ["int8_static: no Conv, MatMul or Gemm with constant weights to quantize"])
        if ctx.calib_dir is None or not Path(ctx.calib_dir).exists():
            return PassResult(False, ["int8_static: no calibration data (give --data with enough samples)"])
        with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
            prepared, notes = prepare(src, Path(tmp))
            used = self.quantize(prepared, dst, params, ctx)
        if used == 0:
            return PassResult(False, ["int8_static: too few calibration samples for one batch"])
        exclude = list(params.get("exclude", []))
        desc = "per-channel" if params.get("per_channel") else "per-tensor"
        desc += ", u8 activations" if params.get("activation_type") == "uint8" else ""
        method = params.get("calibrate", "minmax")
        notes.append(
            f"int8 static QDQ ({desc} weights, {method} calibration on {used} samples) "
            f"of {len(targets) - len(exclude)} compute nodes"
        )
        if attention_softmaxes(load_graph(src)):
            notes.append(
                "transformer: only weight MatMuls quantized (activations asymmetric); the attention mask, "
                "Softmax, LayerNorm and residual Adds stay fp32 and are not calibrated"
            )
        if exclude:
            notes.append(f"kept in fp32: {', '.join(exclude)}")
        return PassResult(True, notes)

    def quantize(self, prepared: Path, dst: Path, params: dict[str, Any], ctx: PassContext) -> int:
        """Calibrate and quantize a model ``prepare`` made ready; returns the calibration samples used."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        from chipfit.data import Dataset
        from chipfit.passes.quant_common import CalibrationReader, quantize_error

        samples = int(params.get("samples", 128))
        data = Dataset.load_saved(Path(str(ctx.calib_dir)), ctx.input_names).inputs
        first = load_graph(prepared).graph.input[0].type.tensor_type.shape.dim
        fixed = first[0].dim_value if first and first[0].HasField("dim_value") else 0
        reader = CalibrationReader(data, fixed or min(8, samples), samples)
        if reader.samples == 0:
            return 0
        transformer = attention_softmaxes(load_graph(prepared)) > 0
        ops = ("MatMul",) if transformer else OP_TYPES + _OTHER_OPS
        u8 = params.get("activation_type") == "uint8"
        try:
            quantize_static(
                prepared,
                dst,
                reader,
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8 if u8 else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                per_channel=bool(params.get("per_channel", False)),
                calibrate_method=getattr(CalibrationMethod, _METHODS[params.get("calibrate", "minmax")]),
                op_types_to_quantize=list(ops),
                nodes_to_quantize=list(params["nodes"]) if params.get("nodes") else None,
                nodes_to_exclude=list(params.get("exclude", [])),
                use_external_data_format=is_large(prepared),
                calibration_providers=["CPUExecutionProvider"],
                extra_options={
                    "DefaultTensorType": 1,  # FLOAT
                    "CalibMaxIntermediateOutputs": _flush_every(reader.samples // reader.batch),
                    "ActivationSymmetric": not (transformer or u8),
                    # activation × activation MatMuls (Q·Kᵀ, P·V) of a transformer stay fp32
                    "MatMulConstBOnly": transformer,
                },
            )
        except Exception as exc:
            raise quantize_error(self.name, exc) from exc
        return reader.samples


pass_ = Int8Static()
