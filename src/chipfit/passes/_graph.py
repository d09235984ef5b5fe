"""Graph facts the passes decide on, read from the ONNX file alone (no runtime import)."""

from __future__ import annotations

from pathlib import Path

import onnx

__all__ = [
    "LARGE_MODEL_BYTES",
    "attention_softmaxes",
    "float_tensor_count",
    "is_large",
    "load_graph",
    "name_nodes",
    "quantizable_nodes",
]

LARGE_MODEL_BYTES = 1_800_000_000  # protobuf's 2 GB limit, with a margin: write weights as external data


def load_graph(path: Path) -> onnx.ModelProto:
    """The graph without its weights (fast even for multi-GB models)."""
    return onnx.load(str(path), load_external_data=False)


def is_large(path: Path) -> bool:
    """True when the model's weights are (or must be) external data: it has some, or it nears 2 GB."""
    from chipfit.onnx_files import onnx_files

    files = onnx_files(path)
    return len(files) > 1 or sum(p.stat().st_size for p in files) > LARGE_MODEL_BYTES


def attention_softmaxes(model: onnx.ModelProto) -> int:
    """Attention blocks: Softmaxes between two MatMuls (scores = Q·Kᵀ → scale/mask → Softmax → [SDPA's NaN
    guard] → ·V), plus fused attention ops (Attention, MultiHeadAttention, QAttention), so an already fused
    graph is recognised."""
    from chipfit.passes._attention import attention_softmax_nodes

    fused = sum(1 for n in model.graph.node if n.op_type in ("Attention", "MultiHeadAttention", "QAttention"))
    return fused + len(attention_softmax_nodes(model))


def quantizable_nodes(model: onnx.ModelProto, op_types: tuple[str, ...], need_weight: bool = False) -> list[str]:
    """Names of nodes of ``op_types`` (with a constant input, a weight, when ``need_weight``), in graph order."""
    inits = {i.name for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type in op_types and (not need_weight or any(i in inits for i in n.input)):
            out.append(n.name)
    return out


def float_tensor_count(model: onnx.ModelProto) -> int:
    """fp32 initializers plus fp32 graph inputs: what an fp16 conversion would change."""
    inits = sum(1 for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT)
    ins = sum(1 for i in model.graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT)
    return inits + ins


def name_nodes(model: onnx.ModelProto) -> int:
    """Give every unnamed node a stable name (``<op>_<index>``) so it can be excluded by name; returns how many."""
    used = {n.name for n in model.graph.node if n.name}
    named = 0
    for i, n in enumerate(model.graph.node):
        if not n.name:
            name = f"{n.op_type}_{i}"
            while name in used:
                name += "_"
            n.name = name
            used.add(name)
            named += 1
    return named
