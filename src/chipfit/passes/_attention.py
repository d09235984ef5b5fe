"""Attention subgraphs rewritten into the form ONNX Runtime's transformer optimizer fuses (no runtime import).

Hugging Face ``transformers`` 5 exports (TorchScript exporter) differ from the pattern the optimizer knows:
the padding mask is built by an index-arithmetic subgraph (``Range`` / ``Flatten`` / ``Gather`` / ``And`` /
``Where`` with the float minimum), SDPA scales Q and K separately and guards the Softmax with
``Where(IsNaN(p), 0, p)``, and tied zero biases arrive as ``Identity`` nodes of one initializer. ``canonicalize``
rewrites each of these into the classic BERT export form:

- the additive mask becomes ``Mul(Sub(1, Cast(Unsqueeze(Unsqueeze(mask)))), -10000)`` of the 2-D key-padding
  mask input (what the fused ``Attention`` kernel computes with its ``mask_filter_value``);
- ``MatMul(Mul(q, a), Mul(k, b))`` becomes ``Mul(MatMul(q, k), a·b)``;
- the NaN guard is dropped (a row is never fully masked by a key-padding mask with at least one token);
- ``Identity`` of an initializer is replaced by the initializer.

The rewrite is an assumption about the mask (key padding, not causal): the caller must check the outputs
numerically against the original and discard the rewrite when they differ.
"""

from __future__ import annotations

import heapq

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["attention_softmax_nodes", "canonicalize", "heads_and_hidden", "mask_input", "prune_and_sort"]

_UP = {"Add", "Div", "Mul", "Where", "Sub", "Cast", "Reshape", "Transpose"}
_DOWN = {"Where", "Cast", "Dropout", "Identity"}


def _maps(graph: onnx.GraphProto) -> tuple[dict[str, onnx.NodeProto], dict[str, list[onnx.NodeProto]]]:
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return producer, consumers


def attention_softmax_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Softmaxes between two MatMuls (scores = Q·Kᵀ → scale/mask → Softmax → [NaN guard] → ·V)."""
    producer, consumers = _maps(model.graph)
    out = []
    for n in model.graph.node:
        if n.op_type != "Softmax":
            continue
        up, node = False, n
        for _ in range(6):
            node = next((producer[i] for i in node.input if i in producer), None)  # type: ignore[assignment]
            if node is None or node.op_type == "MatMul":
                up = node is not None
                break
            if node.op_type not in _UP:
                break
        frontier, down = [n.output[0]], False
        for _ in range(3):
            nxt = [c for t in frontier for c in consumers.get(t, [])]
            if any(c.op_type == "MatMul" for c in nxt):
                down = True
                break
            frontier = [o for c in nxt if c.op_type in _DOWN for o in c.output]
        if up and down:
            out.append(n)
    return out


def mask_input(model: onnx.ModelProto) -> str | None:
    """The 2-D integer key-padding mask input (``attention_mask``), if the graph has one."""
    for i in model.graph.input:
        t = i.type.tensor_type
        if "mask" in i.name.lower() and t.elem_type in (TensorProto.INT64, TensorProto.INT32) and len(t.shape.dim) == 2:
            return i.name
    return None


def _ancestors(name: str, producer: dict[str, onnx.NodeProto]) -> tuple[set[str], set[str]]:
    """(graph inputs and initializers reached, op types on the way) going up from tensor ``name``; a ``Shape``
    reads only its input's shape, so the walk stops there."""
    leaves, ops, stack, seen = set(), set(), [name], set()
    while stack:
        t = stack.pop()
        if t in seen or not t:
            continue
        seen.add(t)
        node = producer.get(t)
        if node is None:
            leaves.add(t)
            continue
        ops.add(node.op_type)
        if node.op_type != "Shape":
            stack.extend(node.input)
    return leaves, ops


def _scalar(name: str, graph: onnx.GraphProto, producer: dict[str, onnx.NodeProto]) -> float | None:
    init = next((i for i in graph.initializer if i.name == name), None)
    if init is not None:
        arr = numpy_helper.to_array(init)
    elif name in producer and producer[name].op_type == "Constant":
        attr = next((a for a in producer[name].attribute if a.name == "value"), None)
        if attr is None:
            return None
        arr = numpy_helper.to_array(attr.t)
    else:
        return None
    return float(arr.reshape(-1)[0]) if arr.size == 1 else None


def _strip_identities(graph: onnx.GraphProto) -> int:
    inits = {i.name for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    rename = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.input[0] in inits}
    rename = {k: v for k, v in rename.items() if k not in outputs}
    for n in graph.node:
        for k, i in enumerate(n.input):
            if i in rename:
                n.input[k] = rename[i]
    return len(rename)


def _canonical_mask(graph: onnx.GraphProto, mask: str, opset: int) -> str:
    base = "chipfit_mask"
    axes1, axes2 = f"{base}_axes1", f"{base}_axes2"
    graph.initializer.extend([
        numpy_helper.from_array(np.array([1], dtype=np.int64), axes1),
        numpy_helper.from_array(np.array([2], dtype=np.int64), axes2),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), f"{base}_one"),
        numpy_helper.from_array(np.array(-10000.0, dtype=np.float32), f"{base}_filter"),
    ])  # fmt: skip
    if opset >= 13:
        u1 = helper.make_node("Unsqueeze", [mask, axes1], [f"{base}_u1"], name=f"{base}_Unsqueeze")
        u2 = helper.make_node("Unsqueeze", [f"{base}_u1", axes2], [f"{base}_u2"], name=f"{base}_Unsqueeze_1")
    else:
        u1 = helper.make_node("Unsqueeze", [mask], [f"{base}_u1"], name=f"{base}_Unsqueeze", axes=[1])
        u2 = helper.make_node("Unsqueeze", [f"{base}_u1"], [f"{base}_u2"], name=f"{base}_Unsqueeze_1", axes=[2])
    cast = helper.make_node("Cast", [f"{base}_u2"], [f"{base}_f"], name=f"{base}_Cast", to=TensorProto.FLOAT)
    sub = helper.make_node("Sub", [f"{base}_one", f"{base}_f"], [f"{base}_inv"], name=f"{base}_Sub")
    mul = helper.make_node("Mul", [f"{base}_inv", f"{base}_filter"], [base], name=f"{base}_Mul")
    graph.node.extend([u1, u2, cast, sub, mul])
    return base


def canonicalize(model: onnx.ModelProto) -> list[str]:
    """Rewrite ``model`` in place (see the module docstring); returns what was rewritten, one line each."""
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    notes: list[str] = []
    if k := _strip_identities(graph):
        notes.append(f"{k} Identity nodes of initializers replaced by the initializers")
    mask = mask_input(model)
    canonical: str | None = None
    guards = masks = scales = reshapes = 0
    for sm in attention_softmax_nodes(model):
        producer, consumers = _maps(graph)
        for w in list(consumers.get(sm.output[0], [])):  # Where(IsNaN(p), 0, p) → p
            isnan = producer.get(w.input[0]) if w.op_type == "Where" else None
            guard = isnan is not None and isnan.op_type == "IsNaN" and isnan.input[0] == sm.output[0]
            if guard and w.input[2] == sm.output[0] and _scalar(w.input[1], graph, producer) == 0.0:
                for c in consumers.get(w.output[0], []):
                    for k, i in enumerate(c.input):
                        if i == w.output[0]:
                            c.input[k] = sm.output[0]
                guards += 1
        producer, consumers = _maps(graph)
        reshapes += _drop_shape_restoring_reshapes(graph, sm, producer, consumers)
        add = producer.get(sm.input[0])
        if add is None or add.op_type != "Add":
            continue
        graph_inputs = {i.name for i in graph.input}
        scores = ""
        for k, t in enumerate(add.input):
            leaves, ops = _ancestors(t, producer)
            if mask and mask in leaves and "MatMul" not in ops and not (leaves & graph_inputs) - {mask}:
                canonical = canonical or _canonical_mask(graph, mask, opset)
                add.input[k] = canonical
                masks += 1
                scores = add.input[1 - k]
        mm = producer.get(scores)
        if mm is not None and mm.op_type == "MatMul":
            scales += _fold_qk_scale(graph, mm, producer, consumers)
        elif mm is not None and mm.op_type == "Mul" and masks:
            _mul_to_div(graph, mm, producer)
    if guards:
        notes.append(f"{guards} SDPA NaN guards after Softmax dropped")
    if masks:
        notes.append(f"{masks} additive attention masks rebuilt from '{mask}' as Mul(Sub(1, mask), -10000)")
    if reshapes:
        notes.append(f"{reshapes} SDPA reshapes of the attention output to its own shape dropped")
    if scales:
        notes.append(f"{scales} Q/K scalings folded into one scale after Q·Kᵀ")
    prune_and_sort(graph)
    return notes


def _drop_shape_restoring_reshapes(
    graph: onnx.GraphProto,
    sm: onnx.NodeProto,
    producer: dict[str, onnx.NodeProto],
    consumers: dict[str, list[onnx.NodeProto]],
) -> int:
    """SDPA's ``Reshape(P·V, [b, -1, s, d])`` with each dim ``Gather(Shape(·), i)`` at its own position i (or -1):
    the 4-D attention output reshaped to the shape it has. Bypassed; returns how many."""
    dropped = 0
    for mm in (c for c in consumers.get(sm.output[0], []) if c.op_type == "MatMul"):
        for r in [c for c in consumers.get(mm.output[0], []) if c.op_type == "Reshape"]:
            concat = producer.get(r.input[1])
            if concat is None or concat.op_type != "Concat" or len(concat.input) != 4:
                continue
            if not all(_dim_at(t, k, graph, producer) for k, t in enumerate(concat.input)):
                continue
            for c in consumers.get(r.output[0], []):
                for k, i in enumerate(c.input):
                    if i == r.output[0]:
                        c.input[k] = mm.output[0]
            dropped += 1
    return dropped


def _dim_at(name: str, position: int, graph: onnx.GraphProto, producer: dict[str, onnx.NodeProto]) -> bool:
    """True when ``name`` is -1 or ``Unsqueeze(Gather(Shape(x), position))``."""
    if _scalar(name, graph, producer) == -1.0:
        return True
    unsq = producer.get(name)
    gather = producer.get(unsq.input[0]) if unsq is not None and unsq.op_type == "Unsqueeze" else None
    if gather is None or gather.op_type != "Gather":
        return False
    shape = producer.get(gather.input[0])
    return shape is not None and shape.op_type == "Shape" and _scalar(gather.input[1], graph, producer) == position


def _fold_qk_scale(
    graph: onnx.GraphProto,
    mm: onnx.NodeProto,
    producer: dict[str, onnx.NodeProto],
    consumers: dict[str, list[onnx.NodeProto]],
) -> int:
    """``MatMul(Mul(q, a), Mul(k, b))`` → ``Div(MatMul(q, k), 1/(a·b))``; 1 when rewritten."""
    muls = [producer.get(i) for i in mm.input]
    scales, srcs = [], []
    for m in muls:
        if m is None or m.op_type != "Mul":
            return 0
        for j in (0, 1):
            s = _scalar(m.input[j], graph, producer)
            if s is not None:
                scales.append(s)
                srcs.append(m.input[1 - j])
                break
        else:
            return 0
    if any(len(consumers.get(m.output[0], [])) != 1 for m in muls if m is not None):
        return 0
    scale_name = f"{mm.name or mm.output[0]}_chipfit_scale"
    divisor = np.array(1.0 / (scales[0] * scales[1]), dtype=np.float32)
    graph.initializer.append(numpy_helper.from_array(divisor, scale_name))
    raw = f"{mm.output[0]}_chipfit_raw"
    out = mm.output[0]
    mm.input[0], mm.input[1] = srcs
    mm.output[0] = raw
    graph.node.append(helper.make_node("Div", [raw, scale_name], [out], name=f"{mm.name}_chipfit_scale"))
    return 1


def _mul_to_div(graph: onnx.GraphProto, mul: onnx.NodeProto, producer: dict[str, onnx.NodeProto]) -> None:
    """The scores' ``Mul(x, c)`` as ``Div(x, 1/c)``: the optimizer looks for the mask's ``Mul`` among the
    pre-Softmax Add's parents and takes the first ``Mul`` it finds, so the scale must not be one."""
    for j in (0, 1):
        c = _scalar(mul.input[j], graph, producer)
        if c is not None and c != 0.0:
            name = f"{mul.name or mul.output[0]}_chipfit_divisor"
            graph.initializer.append(numpy_helper.from_array(np.array(1.0 / c, dtype=np.float32), name))
            mul.op_type = "Div"
            mul.input[0], mul.input[1] = mul.input[1 - j], name
            return


def prune_and_sort(graph: onnx.GraphProto) -> None:
    """Drop nodes nothing uses, then order the rest topologically, stable (new nodes were appended at the end)."""
    needed = {o.name for o in graph.output}
    producer = {o: k for k, n in enumerate(graph.node) for o in n.output}
    live: set[int] = set()
    stack = list(needed)
    while stack:
        k = producer.get(stack.pop(), -1)
        if k < 0 or k in live:
            continue
        live.add(k)
        stack.extend(i for i in graph.node[k].input if i)
    nodes = [graph.node[k] for k in sorted(live)]
    index = {o: k for k, n in enumerate(nodes) for o in n.output}
    deps = [{index[i] for i in n.input if i in index} for n in nodes]
    users: list[list[int]] = [[] for _ in nodes]
    for k, d in enumerate(deps):
        for j in d:
            users[j].append(k)
    waiting = [len(d) for d in deps]
    heap = [k for k, w in enumerate(waiting) if w == 0]
    heapq.heapify(heap)
    order: list[int] = []
    while heap:
        k = heapq.heappop(heap)
        order.append(k)
        for u in users[k]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(heap, u)
    order += [k for k in range(len(nodes)) if k not in set(order)]  # a cycle: keep the rest as it was
    ordered = [onnx.NodeProto() for _ in order]
    for dst, k in zip(ordered, order, strict=True):
        dst.CopyFrom(nodes[k])
    used = {i for n in ordered for i in n.input}
    del graph.node[:]
    graph.node.extend(ordered)
    for k in reversed(range(len(graph.initializer))):  # in place: weights are not copied
        if graph.initializer[k].name not in used and graph.initializer[k].name not in needed:
            del graph.initializer[k]


def heads_and_hidden(model: onnx.ModelProto) -> tuple[int, int]:
    """(heads, hidden size) read from the Q/K/V reshapes to (batch, seq, heads, head size), the most common pair;
    (0, 0) when the graph has none; heads given as -1 (``view(b, s, -1, d)``) come from the projection width.
    The optimizer's own detection needs a constant shape, which exports with a
    dynamic sequence length do not have (their shape is a ``Concat`` of two ``Shape`` dims and two constants)."""
    graph = model.graph
    producer, _ = _maps(graph)
    inits = {i.name: i for i in graph.initializer}
    counts: dict[tuple[int, int], int] = {}
    for n in graph.node:
        if n.op_type != "Reshape" or len(n.input) < 2:
            continue
        dims: list[float | None] = []
        if n.input[1] in inits:
            dims = [float(v) for v in numpy_helper.to_array(inits[n.input[1]]).reshape(-1)]
        elif (c := producer.get(n.input[1])) is not None and c.op_type == "Concat" and len(c.input) == 4:
            dims = [_scalar(i, graph, producer) for i in c.input]
        if len(dims) != 4 or dims[3] is None or dims[3] <= 0 or dims[2] is None:
            continue
        hidden = dims[2] * dims[3] if dims[2] > 0 else _projection_width(n.input[0], inits, producer)
        if hidden and hidden % dims[3] == 0:
            pair = (int(hidden // dims[3]), int(hidden))
            counts[pair] = counts.get(pair, 0) + 1
    return max(counts, key=lambda p: counts[p]) if counts else (0, 0)


def _projection_width(name: str, inits: dict[str, TensorProto], producer: dict[str, onnx.NodeProto]) -> float:
    """Output width of the ``Add(MatMul(x, W), b)`` (or bare ``MatMul``) that produces ``name``; 0 if unknown."""
    node = producer.get(name)
    for _ in range(2):
        if node is None or node.op_type not in ("Add", "MatMul"):
            return 0
        for i in node.input:
            if i in inits and len(inits[i].dims) >= 1:
                return float(inits[i].dims[-1])
        node = next((producer[i] for i in node.input if i in producer), None)
    return 0
