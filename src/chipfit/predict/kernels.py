"""Kernels as ONNX Runtime runs them, their features, and single-kernel models for micro-benchmarks.

A kernel is one node of the runtime's optimized graph (``passes.kernel_graph``): its op (``domain:op_type``),
the shapes and dtypes it reads and writes, which inputs are constants (weights), and its scalar attributes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper

__all__ = ["FEATURE_NAMES", "Kernel", "kernel_bytes", "kernel_features", "kernel_flops", "kernels_of"]

MATMUL_OPS = {
    "MatMul",
    "Gemm",
    "FusedMatMul",
    "MatMulInteger",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "QLinearMatMul",
    "FusedGemm",
    "MatMulNBits",
    "QGemm",
}
CONV_OPS = {"Conv", "FusedConv", "QLinearConv", "ConvInteger", "NhwcFusedConv", "ConvTranspose"}
ATTENTION_OPS = {"Attention", "QAttention", "MultiHeadAttention"}


@dataclass(frozen=True)
class Kernel:
    """One executed kernel: ``inputs`` are (shape, dtype, constant) and ``outputs`` (shape, dtype)."""

    op: str
    inputs: tuple[tuple[tuple[int, ...], str, bool], ...]
    outputs: tuple[tuple[tuple[int, ...], str], ...]
    attrs: str = "{}"  # JSON of the scalar attributes (part of the signature: kernel_shape, transA, ...)

    @property
    def signature(self) -> str:
        return json.dumps([self.op, self.inputs, self.outputs, self.attrs])

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "inputs": self.inputs, "outputs": self.outputs, "attrs": self.attrs}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Kernel:
        ins = tuple((tuple(int(x) for x in s), str(t), bool(c)) for s, t, c in d["inputs"])
        outs = tuple((tuple(int(x) for x in s), str(t)) for s, t in d["outputs"])
        return cls(str(d["op"]), ins, outs, str(d.get("attrs", "{}")))


def _attrs(node: onnx.NodeProto) -> str:
    out: dict[str, Any] = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            out[a.name] = v.decode(errors="replace")
        elif isinstance(v, int | float | str) or (isinstance(v, list) and all(isinstance(x, int | float) for x in v)):
            out[a.name] = v
    return json.dumps(out, sort_keys=True)


def kernels_of(proto: onnx.ModelProto, values: Mapping[str, np.ndarray]) -> list[tuple[Kernel, onnx.NodeProto]]:
    """The kernels of an optimized graph with the tensor values of one run (``kernel_graph.capture``).
    Nodes with subgraphs (If, Loop, Scan) are left out: they are not single kernels."""
    consts = {i.name for i in proto.graph.initializer}
    out = []
    for node in proto.graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            continue
        ins, outs = [], []
        for name in node.input:
            v = values.get(name) if name else None
            ins.append(
                ((), "none", True) if v is None else (tuple(int(d) for d in v.shape), str(v.dtype), name in consts)
            )
        for name in node.output:
            v = values.get(name) if name else None
            outs.append(((), "none") if v is None else (tuple(int(d) for d in v.shape), str(v.dtype)))
        op = f"{node.domain}:{node.op_type}" if node.domain and node.domain != "ai.onnx" else node.op_type
        out.append((Kernel(op, tuple(ins), tuple(outs), _attrs(node)), node))
    return out


def _numel(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape)) if shape else 1


def _itemsize(dtype: str) -> int:
    try:
        return int(np.dtype(dtype).itemsize)
    except TypeError:
        return 4


def kernel_flops(k: Kernel) -> float:
    """Multiply-adds × 2 for matrix products, convolutions and attention; else one op per output element
    per input."""
    name = k.op.rpartition(":")[2]
    out = k.outputs[0][0] if k.outputs else ()
    if name in MATMUL_OPS and len(k.inputs) >= 2 and k.inputs[0][0]:
        a = k.inputs[0][0]
        trans = json.loads(k.attrs).get("transA", 0)
        kdim = a[-2] if trans and len(a) >= 2 else a[-1]
        return 2.0 * _numel(out) * kdim
    if name in CONV_OPS and len(k.inputs) >= 2 and k.inputs[1][0]:
        w = k.inputs[1][0]
        return 2.0 * _numel(out) * _numel(w) / max(1, w[0])
    if name in ATTENTION_OPS and k.inputs and len(k.inputs[0][0]) == 3:
        b, s, h = k.inputs[0][0]
        proj = 2.0 * b * s * h * (k.inputs[1][0][-1] if len(k.inputs) > 1 and k.inputs[1][0] else 3 * h)
        return proj * (name != "MultiHeadAttention") + 4.0 * b * s * s * h
    return float(_numel(out) * max(1, len(k.inputs)))


FEATURE_NAMES = (
    "log_flops",
    "log_in_bytes",
    "log_out_bytes",
    "log_const_bytes",
    *(f"in0_d{i}" for i in range(4)),
    *(f"in1_d{i}" for i in range(4)),
    *(f"out_d{i}" for i in range(4)),
    "threads",
)


def _dims(shape: tuple[int, ...]) -> list[float]:
    last = list(shape[-4:])
    return [0.0] * (4 - len(last)) + [math.log2(d + 1) for d in last]


def kernel_features(k: Kernel, threads: int) -> list[float]:
    """Features of one kernel run with ``threads`` intra-op threads (see FEATURE_NAMES)."""
    in_bytes = sum(_numel(s) * _itemsize(t) for s, t, c in k.inputs if not c)
    const_bytes = sum(_numel(s) * _itemsize(t) for s, t, c in k.inputs if c and t != "none")
    out_bytes = sum(_numel(s) * _itemsize(t) for s, t in k.outputs)
    dyn = [s for s, _, c in k.inputs if not c] + [(), ()]
    w = [s for s, _, c in k.inputs if c and len(s) > 1] + [()]
    second = dyn[1] if dyn[1] else w[0]
    return [
        math.log(kernel_flops(k) + 1),
        math.log(in_bytes + 1),
        math.log(out_bytes + 1),
        math.log(const_bytes + 1),
        *_dims(dyn[0]),
        *_dims(second),
        *_dims(k.outputs[0][0] if k.outputs else ()),
        float(threads),
    ]


def kernel_bytes(k: Kernel) -> float:
    """Bytes one run of ``k`` reads and writes."""
    ins = sum(_numel(s) * _itemsize(t) for s, t, _ in k.inputs if t != "none")
    return float(ins + sum(_numel(s) * _itemsize(t) for s, t in k.outputs))
