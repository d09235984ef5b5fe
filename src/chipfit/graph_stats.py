"""Graph statistics of an ONNX model: parameters, per-node FLOPs and bytes where shapes are known.

Shapes come from ONNX shape inference; a symbolic batch dimension is counted as 1, so the totals are per
sample. A node whose FLOPs cannot be derived (unknown shapes or an op not modelled here) has ``flops=None``
and is counted in ``unknown_nodes``; nothing is guessed.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper

__all__ = ["GraphStats", "NodeStats", "compute_stats"]

Shape = tuple[int, ...]

_ELEMENTWISE_1 = {
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Abs",
    "Neg",
    "Exp",
    "Log",
    "Sqrt",
    "Pow",
    "Max",
    "Min",
    "Clip",
    "Erf",
    "PRelu",
    "Elu",
    "Selu",
    "HardSigmoid",
    "HardSwish",
    "Where",
    "Equal",
    "Less",
    "Greater",
    "Not",
    "And",
    "Or",
    "Reciprocal",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "QuantizeLinear",
    "DequantizeLinear",
    "Cast",
    "BatchNormalization",
}
_ELEMENTWISE_K = {
    "Softmax": 5,
    "LogSoftmax": 5,
    "LayerNormalization": 8,
    "Gelu": 8,
    "FastGelu": 8,
    "InstanceNormalization": 8,
    "SkipLayerNormalization": 9,
    "BiasGelu": 9,
    "Softplus": 3,
}
_REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "GlobalAveragePool", "GlobalMaxPool"}
_ZERO_FLOP = {
    "Reshape",
    "Transpose",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Concat",
    "Split",
    "Slice",
    "Gather",
    "Shape",
    "Identity",
    "Constant",
    "Expand",
    "Dropout",
    "Pad",
    "Tile",
    "ConstantOfShape",
}


@dataclass(frozen=True)
class NodeStats:
    name: str
    op_type: str
    flops: int | None  # multiply-adds count as 2
    bytes: int | None  # bytes read (inputs, weights included) + written (outputs)
    weight_bytes: int = 0  # of ``bytes``, those of initializers (read once per run whatever the batch)


@dataclass
class GraphStats:
    params: int
    param_bytes: int
    n_nodes: int
    op_counts: dict[str, int]
    flops: int  # sum over nodes with known FLOPs, per sample
    bytes: int
    unknown_nodes: int
    nodes: list[NodeStats] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("nodes")
        return d


def _shape_map(model: onnx.ModelProto) -> tuple[dict[str, Shape], dict[str, int]]:
    """name -> concrete shape (symbolic dims as 1), name -> element size in bytes."""
    shapes: dict[str, Shape] = {}
    sizes: dict[str, int] = {}
    g = model.graph
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        t = vi.type.tensor_type
        if not t.HasField("shape") or t.elem_type == 0:
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim)
        shapes[vi.name] = dims
        sizes[vi.name] = _itemsize(t.elem_type)
    for init in g.initializer:
        shapes[init.name] = tuple(init.dims)
        sizes[init.name] = _itemsize(init.data_type)
    return shapes, sizes


def _itemsize(elem_type: int) -> int:
    try:
        return int(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize)
    except (KeyError, TypeError, ValueError):
        return 4


def _numel(shape: Shape) -> int:
    return int(math.prod(shape))


def _node_flops(node: onnx.NodeProto, shapes: dict[str, Shape]) -> int | None:
    op = node.op_type
    ins = [shapes.get(n) for n in node.input]
    outs = [shapes.get(n) for n in node.output]
    out = outs[0] if outs else None
    if op in _ZERO_FLOP:
        return 0
    if out is None:
        return None
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul"):
        a = ins[0]
        if a is None or len(a) < 1:
            return None
        return 2 * _numel(out) * a[-1]
    if op == "Gemm":
        a = ins[0]
        trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
        if a is None or len(a) != 2:
            return None
        k = a[0] if trans_a else a[1]
        bias = _numel(out) if len(node.input) > 2 else 0
        return 2 * _numel(out) * k + bias
    if op in ("Conv", "ConvInteger", "QLinearConv", "FusedConv", "NhwcConv"):
        w = shapes.get(node.input[3 if op == "QLinearConv" else 1])
        if w is None or len(w) < 3:
            return None
        return 2 * _numel(out) * _numel(w[1:])
    if op == "ConvTranspose":
        x, w = ins[0], ins[1] if len(ins) > 1 else None
        if x is None or w is None:
            return None
        return 2 * _numel(x) * _numel(w[1:]) * (w[0] // max(x[1], 1) if len(x) > 1 else 1)
    if op in _ELEMENTWISE_1:
        return _numel(out)
    if op in _ELEMENTWISE_K:
        return _ELEMENTWISE_K[op] * _numel(out)
    if op in _REDUCE:
        return _numel(ins[0]) if ins and ins[0] is not None else None
    if op in ("MaxPool", "AveragePool"):
        kernel = next((tuple(at.ints) for at in node.attribute if at.name == "kernel_shape"), None)
        return _numel(out) * _numel(kernel) if kernel else None
    return None


def _node_bytes(node: onnx.NodeProto, shapes: dict[str, Shape], sizes: dict[str, int]) -> int | None:
    total = 0
    for name in list(node.input) + list(node.output):
        if not name:
            continue
        if name not in shapes:
            return None
        total += _numel(shapes[name]) * sizes.get(name, 4)
    return total


def compute_stats(inferred: onnx.ModelProto) -> GraphStats:
    """Statistics of a model on which shape inference has already run."""
    shapes, sizes = _shape_map(inferred)
    g = inferred.graph
    inits = {t.name: _numel(tuple(t.dims)) * _itemsize(t.data_type) for t in g.initializer}
    nodes = [
        NodeStats(
            n.name or f"{n.op_type}_{i}",
            n.op_type,
            _node_flops(n, shapes),
            _node_bytes(n, shapes, sizes),
            sum(inits.get(x, 0) for x in n.input),
        )
        for i, n in enumerate(g.node)
    ]
    params = sum(_numel(tuple(t.dims)) for t in g.initializer)
    param_bytes = sum(_numel(tuple(t.dims)) * _itemsize(t.data_type) for t in g.initializer)
    return GraphStats(
        params=params,
        param_bytes=param_bytes,
        n_nodes=len(nodes),
        op_counts=dict(Counter(n.op_type for n in nodes)),
        flops=sum(n.flops for n in nodes if n.flops is not None),
        bytes=sum(n.bytes for n in nodes if n.bytes is not None),
        unknown_nodes=sum(1 for n in nodes if n.flops is None),
        nodes=nodes,
    )
