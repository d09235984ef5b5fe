"""The memory and the recomputation of a checkpoint schedule as PyTorch's autograd runs it.

A schedule is a set of checkpointed **segments** (runs of units that one ``torch.utils.checkpoint`` wraps, see
:func:`segments_of`). The simulation walks the step as eager PyTorch runs it (a steady-state step: the optimizer
state is resident throughout, gradients are freed between steps):

- **static**: parameters, buffers, the inputs and the optimizer state (Adam: two fp32-sized tensors per
  parameter; SGD without momentum: none);
- **kept for backward**: a storage stays from its creation until the backward of the last unit that needs it —
  a unit outside every checkpoint holds what its ops saved; a checkpointed segment holds only its inputs (its
  own saved storages are dropped in the forward and recomputed in its backward);
- **backward step** of a unit (or a whole segment): what is still kept, the segment's recomputed storages, the
  gradients flowing across the step (the outputs it receives gradients for and the inputs it produces them
  for) or, if more, twice its largest storage (a gradient and its input inside the step), and the parameter
  gradients accumulated so far;
- **optimizer step**: parameters, gradients, state, and Adam's temporary (one parameter-sized tensor).

The peak is the largest of the forward's end, every backward step and the optimizer step.
"""

from __future__ import annotations

from dataclasses import dataclass

from chipfit.remat.graph import GLUE, StepGraph

__all__ = ["Simulation", "releases", "segments_of", "segments_reaching", "simulate", "static_bytes"]

OPTIMIZER_STATES = {"sgd": 0, "adam": 2}


@dataclass(frozen=True)
class Simulation:
    peak_bytes: int
    static_bytes: int
    recompute_ms: float
    where: str  # "forward", "backward <unit>" or "optimizer"


def segments_of(graph: StepGraph, recomputed: set[int] | frozenset[int]) -> list[tuple[int, ...]]:
    """Recomputed units grouped into checkpoints: adjacent units that are consecutive children of one
    ``nn.Sequential`` share a checkpoint; any other recomputed unit is checkpointed alone."""
    return segments_reaching(graph, {(u, u) for u in recomputed}, split=False)


def segments_reaching(
    graph: StepGraph, pairs: set[tuple[int, int]] | frozenset[tuple[int, int]], split: bool = True
) -> list[tuple[int, ...]]:
    """Checkpoints from (u, w) pairs: u is recomputed for unit w, so its checkpoint reaches from u to w (as
    far as the units are consecutive children of one ``nn.Sequential``). Overlapping reaches share one
    checkpoint; with ``split``, reaches that only touch stay separate checkpoints."""
    spans: list[list[int]] = []
    for u, w in sorted(pairs):
        end = u
        while end < max(u, w) and _adjacent(graph, end, end + 1):
            end += 1
        last = spans[-1] if spans else None
        if last is not None and (u <= last[1] or (not split and u == last[1] + 1 and _adjacent(graph, u - 1, u))):
            last[1] = max(last[1], end)
        else:
            spans.append([u, end])
    return [tuple(range(a, b + 1)) for a, b in spans]


def _adjacent(graph: StepGraph, a: int, b: int) -> bool:
    ua, ub = graph.units[a], graph.units[b]
    return (
        ua.seq_parent is not None
        and ua.seq_parent == ub.seq_parent
        and ub.first_index == ua.first_index + len(ua.members)
    )


def static_bytes(graph: StepGraph, optimizer: str) -> int:
    return graph.param_bytes * (1 + OPTIMIZER_STATES[optimizer]) + graph.buffer_bytes + graph.input_bytes


def releases(graph: StepGraph, segments: list[tuple[int, ...]]) -> dict[int, int]:
    """Storage id -> the lowest unit holding it for the backward (it is freed once the backward passes that
    unit; -1: held to the end). Storages nobody holds are absent."""
    seg_of = {u for seg in segments for u in seg}
    release: dict[int, int] = {}

    def hold(s: int, at: int) -> None:
        release[s] = min(release.get(s, graph.n), at)

    for s, savers in graph.savers.items():
        creator = graph.creator.get(s, GLUE)
        for v in savers:
            if v == GLUE:
                hold(s, creator if creator != GLUE else -1)
            elif v not in seg_of:
                hold(s, v)
    for seg in segments:
        for s in graph.units[seg[0]].inputs:
            hold(s, seg[0])
    return release


def simulate(graph: StepGraph, segments: list[tuple[int, ...]], optimizer: str = "sgd") -> Simulation:
    """Predicted peak bytes and recomputed milliseconds of the step under ``segments`` (see the docstring)."""
    n = graph.n
    seg_of = {u: k for k, seg in enumerate(segments) for u in seg}
    static = static_bytes(graph, optimizer)
    release = releases(graph, segments)
    # the steps of the backward, last first: a segment is one step
    steps: list[tuple[int, int]] = []
    u = n - 1
    while u >= 0:
        if u in seg_of:
            seg = segments[seg_of[u]]
            steps.append((seg[0], seg[-1]))
            u = seg[0] - 1
        else:
            steps.append((u, u))
            u -= 1
    kept_all = sum(graph.sizes[s] for s in release)
    fwd_peak = static + kept_all + max([graph.glue_largest] + [un.largest for un in graph.units])
    peak, where = fwd_peak, "forward"
    grads_done = graph.param_bytes - sum(un.param_bytes for un in graph.units)  # parameters outside units
    recompute_ms = 0.0
    for a, b in steps:
        live = sum(graph.sizes[s] for s, r in release.items() if r <= b)
        recompute = 0
        if a in seg_of:
            inside = set(range(a, b + 1))
            for s, savers in graph.savers.items():
                if graph.creator.get(s, GLUE) in inside and savers & inside and not release.get(s, n) <= b:
                    recompute += graph.sizes[s]
            recompute_ms += sum(graph.units[k].fwd_ms for k in inside)
        crossing = _crossing(graph, a, b)
        largest = max(graph.units[k].largest for k in range(a, b + 1))
        grads_done += sum(graph.units[k].param_bytes for k in range(a, b + 1))
        at = static + live + recompute + max(crossing, 2 * largest) + grads_done
        if at > peak:
            peak, where = at, f"backward {graph.units[b].name}"
    opt = graph.param_bytes * (2 + OPTIMIZER_STATES[optimizer] + (1 if optimizer == "adam" else 0))
    opt += graph.buffer_bytes + graph.input_bytes
    if opt > peak:
        peak, where = opt, "optimizer"
    return Simulation(int(peak), static, recompute_ms, where)


def _crossing(graph: StepGraph, a: int, b: int) -> int:
    """Bytes of the gradients alive across the step of units a..b: those of the storages made at or before b
    and read after it (the gradients it receives), and of its own inputs (the gradients it produces)."""
    seen: set[int] = set(graph.units[a].inputs)
    for k in range(b + 1, graph.n):
        for s in graph.units[k].inputs:
            c = graph.creator.get(s, GLUE)
            if c != GLUE and c <= b:
                seen.add(s)
    return sum(graph.sizes.get(s, 0) for s in seen)
