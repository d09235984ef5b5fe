"""fp16: weights and arithmetic in half precision (ONNX Runtime's float16 converter), with the model's inputs
and outputs kept fp32 (``keep_io_types``) so callers and runtimes that feed fp32 need no change.

Whether fp16 is worth trying is the hardware's question, answered by the backend's candidate space: on a CPU
without fast fp16 arithmetic (no AVX512-FP16 / AMX-FP16 on x86, no FP16 vector units on Arm) ONNX Runtime casts
fp16 back to fp32 around most kernels, so the candidate is listed as skipped with that reason unless asked for.
Ops that lose too much in fp16 (exp-heavy reductions) stay fp32 through ``op_block_list``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import onnx

from chipfit.passes._graph import float_tensor_count, is_large, load_graph
from chipfit.passes.base import PassContext, PassResult

__all__ = ["Fp16", "has_float", "pass_"]

_BLOCK = ["Range", "RandomNormalLike", "RandomUniformLike", "NonMaxSuppression", "TopK", "Resize", "Upsample"]


def has_float(path: Path) -> bool:
    return float_tensor_count(load_graph(path)) > 0


class Fp16:
    name = "fp16"
    params: ClassVar[dict[str, tuple[Any, ...]]] = {"keep_io_types": (True, False)}

    def apply(self, src: Path, dst: Path, params: dict[str, Any], ctx: PassContext) -> PassResult:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        keep_io = bool(params.get("keep_io_types", True))
        if not has_float(src):
            return PassResult(False, ["fp16: the model has no fp32 weights or inputs to convert"])
        model = onnx.load(str(src))
        converted = convert_float_to_float16(model, keep_io_types=keep_io, op_block_list=_BLOCK)
        large = is_large(src)
        onnx.save_model(converted, str(dst), save_as_external_data=large, location=dst.name + ".data")
        io = "inputs/outputs kept fp32" if keep_io else "fp16 inputs/outputs"
        return PassResult(True, [f"weights and arithmetic in fp16 ({io})"])


pass_ = Fp16()
