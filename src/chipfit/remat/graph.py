"""One training step traced at aten level, coarsened to the layers that can be checkpointed.

:func:`trace` runs the step's forward under a ``TorchDispatchMode`` (every aten op: the storages it allocates,
their sizes, its FLOPs, the module stack it ran under) and ``saved_tensors_hooks`` (which storages autograd
keeps for the backward, and which op kept them), then times forward and backward of every module with plain
hooks (the median of ``repeats`` steps on this machine). The module state is left as found: gradients, buffers
(BatchNorm statistics) and the RNG are restored.

The aten graph is then coarsened to **units**, the modules a checkpoint can wrap: starting from the root, the
module holding the most saved bytes is replaced by its children while the frontier stays within
``max_units`` modules, provided its own code between the children ("glue": a residual add, a functional
activation) keeps under 10% of its saved bytes (an ``nn.Sequential`` has none) and no child runs twice. Too many
units (a long ``nn.Sequential`` of leaves) are merged into runs of adjacent siblings. Each unit gets its
forward time, FLOPs, the storages it allocates and which of them autograd keeps and for whom.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from chipfit.remat.record import Call, Recorder, preserved, record, tensors, time_modules
from chipfit.remat.step import default_loss

__all__ = ["StepGraph", "Unit", "trace"]

GLUE = -1  # the "unit" of ops outside every unit (residual adds between blocks, the loss)
GLUE_FRACTION = 0.1


@dataclass(frozen=True)
class Unit:
    """A run of modules that one checkpoint can wrap: one module, or adjacent children of an ``nn.Sequential``."""

    name: str
    members: tuple[str, ...]  # module paths, in call order
    seq_parent: str | None  # the nn.Sequential holding ``members`` consecutively, or None
    first_index: int  # index of members[0] in seq_parent (0 when not in one)
    fwd_ms: float
    bwd_ms: float
    flops: float
    param_bytes: int
    inputs: frozenset[int]  # storage ids of its tensor inputs that the step allocated
    created: frozenset[int]  # storage ids allocated by its ops
    largest: int  # bytes of the largest storage it allocates (the backward's transient gradient)


@dataclass
class StepGraph:
    """The traced step at unit level (see the module docstring). Storage ids are the trace's own numbers."""

    units: list[Unit]
    sizes: dict[int, int]  # storage id -> bytes
    creator: dict[int, int]  # storage id -> unit index (GLUE for ops outside units)
    savers: dict[int, frozenset[int]]  # storage id -> the units (or GLUE) whose ops saved it for backward
    deps: list[frozenset[int]]  # unit index -> the units whose outputs it reads (through glue)
    param_bytes: int
    buffer_bytes: int
    input_bytes: int
    glue_largest: int
    fwd_ms: float
    bwd_ms: float
    aten_ops: int
    cost_source: str  # "profiled" or "flops"
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.units)


def _seq_index(module: torch.nn.Module, path: str) -> tuple[str | None, int]:
    """(the nn.Sequential parent's path, the child's index in it), or (None, 0)."""
    parent_path, _, name = path.rpartition(".")
    parent = module.get_submodule(parent_path) if path else None
    if parent is None or type(parent).forward is not torch.nn.Sequential.forward:
        return None, 0
    return parent_path, list(parent._modules).index(name)


def _frontier(module: torch.nn.Module, rec: Recorder, calls: list[Call], max_units: int) -> list[tuple[str, ...]]:
    """The module paths that become units (before merging runs), in call order."""
    saved = {s for s, _ in rec.saved}
    order = {c.path: i for i, c in reversed(list(enumerate(calls)))}
    n_calls: dict[str, int] = {}
    children: dict[str, list[str]] = {}
    for c in calls:
        n_calls[c.path] = n_calls.get(c.path, 0) + 1
        if c.caller is not None and c.path not in children.setdefault(c.caller, []):
            children[c.caller].append(c.path)
    inside: dict[str, int] = {}
    own: dict[str, int] = {}
    for op in rec.ops:
        b = sum(rec.sizes[s] for s in op.outputs if s in saved)
        for p in set(op.stack):
            inside[p] = inside.get(p, 0) + b
        if op.stack:
            own[op.stack[-1]] = own.get(op.stack[-1], 0) + b

    root = calls[0].path if calls else ""

    def expandable(path: str) -> bool:
        kids = children.get(path, [])
        if not kids or any(n_calls[k] > 1 for k in kids):
            return False
        if path == root:
            return True  # its glue is never checkpointed, but its children can be
        seq, _ = _seq_index(module, kids[0])
        chain = seq == path and all(_seq_index(module, k)[0] == path for k in kids)
        return chain or own.get(path, 0) <= GLUE_FRACTION * max(inside.get(path, 0), 1)

    frontier = [root]
    blocked: set[str] = set()
    while True:
        cands = [p for p in frontier if p not in blocked and expandable(p)]
        if not cands:
            break
        best = max(cands, key=lambda p: inside.get(p, 0))
        kids = children[best]
        if len(frontier) > 1 and len(frontier) - 1 + len(kids) > max_units:
            blocked.add(best)
            continue
        at = frontier.index(best)
        frontier[at : at + 1] = kids
    frontier.sort(key=lambda p: order[p])
    return [(p,) for p in frontier]


def _merge_runs(
    module: torch.nn.Module, groups: list[tuple[str, ...]], weight: dict[str, int], max_units: int
) -> list[tuple[str, ...]]:
    """Adjacent siblings of one nn.Sequential merged (lightest pair first) until at most ``max_units`` remain."""
    groups = list(groups)

    def pairable(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
        pa, ia = _seq_index(module, a[-1])
        pb, ib = _seq_index(module, b[0])
        return pa is not None and pa == pb and ib == ia + 1

    while len(groups) > max_units:
        pairs = [i for i in range(len(groups) - 1) if pairable(groups[i], groups[i + 1])]
        if not pairs:
            break
        i = min(pairs, key=lambda i: sum(weight.get(p, 0) for p in groups[i] + groups[i + 1]))
        groups[i : i + 2] = [groups[i] + groups[i + 1]]
    return groups


def _unit_name(members: tuple[str, ...]) -> str:
    if len(members) == 1:
        return members[0] or "<root>"
    return f"{members[0]}..{members[-1].rpartition('.')[2]}"


def _build(
    module: torch.nn.Module, rec: Recorder, calls: list[Call], groups: list[tuple[str, ...]], timed: dict[str, float]
) -> tuple[list[Unit], dict[int, int], dict[int, frozenset[int]], list[frozenset[int]], int]:
    unit_of = {p: i for i, g in enumerate(groups) for p in g}

    def owner(stack: tuple[str, ...]) -> int:
        for p in reversed(stack):
            if p in unit_of:
                return unit_of[p]
        return GLUE

    creator: dict[int, int] = {}
    producers: dict[int, frozenset[int]] = {}
    reads: list[set[int]] = [set() for _ in groups]
    flops = [0.0] * len(groups)
    glue_largest = 0
    for op in rec.ops:
        u = owner(op.stack)
        prod = frozenset({u}) if u != GLUE else frozenset().union(*(producers.get(s, frozenset()) for s in op.inputs))
        for s in op.outputs:
            creator[s] = u
            producers[s] = prod
            if u == GLUE:
                glue_largest = max(glue_largest, rec.sizes[s])
        if u != GLUE:
            reads[u].update(op.inputs)
            flops[u] += op.flops
    savers: dict[int, set[int]] = {}
    for s, stack in rec.saved:
        savers.setdefault(s, set()).add(owner(stack))
    first_call: dict[str, Call] = {}
    for c in calls:
        first_call.setdefault(c.path, c)
    units = []
    deps = []
    for i, g in enumerate(groups):
        created = frozenset(s for s, u in creator.items() if u == i)
        outside = {s for s in reads[i] if creator.get(s, GLUE) != i}
        deps.append(frozenset().union(*(producers.get(s, frozenset()) for s in outside)) - {i, GLUE})
        params = {id(p): p for m in g for p in module.get_submodule(m).parameters()}
        seq, idx = _seq_index(module, g[0])
        call = first_call[g[0]]
        units.append(
            Unit(
                name=_unit_name(g),
                members=g,
                seq_parent=seq if len(g) > 1 or seq is not None else None,
                first_index=idx,
                fwd_ms=sum(timed.get(m, 0.0) for m in g),
                bwd_ms=0.0,
                flops=flops[i],
                param_bytes=sum(p.numel() * p.element_size() for p in params.values()),
                inputs=frozenset(call.inputs),
                created=created,
                largest=max((rec.sizes[s] for s in created), default=0),
            )
        )
    return units, creator, {s: frozenset(v) for s, v in savers.items()}, deps, glue_largest


def trace(
    module: torch.nn.Module,
    inputs: tuple[Any, ...],
    loss_fn: Callable[[Any], Any] | None = None,
    max_units: int = 64,
    repeats: int = 1,
    costs: str = "profiled",
) -> StepGraph:
    """The step graph of ``loss_fn(module(*inputs))`` and its backward (see the module docstring); ``costs``
    "flops": each unit costs its FLOPs at a nominal 1 TFLOP/s and its backward twice that (deterministic), instead
    of its profiled time (also the fallback where a unit with FLOPs timed at zero)."""
    loss_fn = loss_fn or default_loss
    with preserved(module):
        timed, fwd_ms, bwd_ms = time_modules(module, inputs, loss_fn, repeats)
        rec, calls = record(module, inputs, loss_fn)
    saved = {s for s, _ in rec.saved}
    weight: dict[str, int] = {}
    for op in rec.ops:
        b = sum(rec.sizes[s] for s in op.outputs if s in saved)
        for p in set(op.stack):
            weight[p] = weight.get(p, 0) + b
    groups = _merge_runs(module, _frontier(module, rec, calls, max_units), weight, max_units)
    units, creator, savers, deps, glue_largest = _build(module, rec, calls, groups, timed)
    total_fwd = sum(u.fwd_ms for u in units)
    source = "profiled"
    if costs == "flops" or total_fwd <= 0 or any(u.fwd_ms <= 0 for u in units if u.flops > 0):
        # FLOPs at a nominal 1 TFLOP/s, the backward twice the forward: machine-independent costs
        source = "flops"
        units = [_with(u, fwd_ms=u.flops / 1e9, bwd_ms=2 * u.flops / 1e9) for u in units]
        fwd_ms = sum(u.fwd_ms for u in units)
        bwd_ms = 2 * fwd_ms
    else:
        units = [_with(u, bwd_ms=bwd_ms * u.fwd_ms / max(total_fwd, 1e-9)) for u in units]
    params = {id(p): p for p in module.parameters()}
    buffers = {id(b): b for b in module.buffers()}
    return StepGraph(
        units=units,
        sizes=dict(rec.sizes),
        creator=creator,
        savers=savers,
        deps=deps,
        param_bytes=sum(p.numel() * p.element_size() for p in params.values()),
        buffer_bytes=sum(b.numel() * b.element_size() for b in buffers.values()),
        input_bytes=sum(t.untyped_storage().nbytes() for t in tensors(inputs)),
        glue_largest=glue_largest,
        fwd_ms=fwd_ms,
        bwd_ms=bwd_ms,
        aten_ops=len(rec.ops),
        cost_source=source,
    )


def _with(u: Unit, **kw: Any) -> Unit:
    import dataclasses

    return dataclasses.replace(u, **kw)
